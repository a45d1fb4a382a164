//! khoi-nbd
