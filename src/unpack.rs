//! Unpacking base layers into a root filesystem for the sandbox. (Being written.)
