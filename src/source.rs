//! The application's files. (Being written.)
