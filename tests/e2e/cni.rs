//! cni end-to-end tests
