//! khoi-iscsi
