//! khoi-admin
