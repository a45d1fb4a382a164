//! khoi-state
