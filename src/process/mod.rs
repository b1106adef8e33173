//! Processes: [`Process`] (one function in a new process, like Python's
//! `multiprocessing.Process`) and [`current_process`].

mod current;
mod launch;
mod spawned;

pub use current::{current_process, ProcessInfo};
pub(crate) use current::{enter_process, enter_worker, in_worker, process_name};

pub use spawned::Process;
