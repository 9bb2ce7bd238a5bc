//! Stage 3: deterministic layers. (Being written.)
