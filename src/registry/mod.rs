//! The OCI distribution client. (Being written; see the contract in the task description.)
