//! The `tollgate` operator commands, as a library the binary and the tests drive.

pub mod dead_letters;
pub mod reconcile;
pub mod test_users;
