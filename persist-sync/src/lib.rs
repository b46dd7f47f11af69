//! Sync worker, protocol and redundancy runtime (issue 3 onward).
