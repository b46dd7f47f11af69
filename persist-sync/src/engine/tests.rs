//! The node core driven by hand: two cores wired back to back, with their
//! store operations run by real stores.
