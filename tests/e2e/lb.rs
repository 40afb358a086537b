//! lb end-to-end tests
