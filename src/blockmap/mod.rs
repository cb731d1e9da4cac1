//! A host file resolved to the device sectors that hold it, verified, and a
//! raw O_DIRECT writer that can only address those sectors.
