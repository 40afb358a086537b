//! dns end-to-end tests
