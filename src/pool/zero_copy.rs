//! The parent's side of zero-copy maps (`crate::remote` is the workers'):
//! [`PtracerGrant`] lets the parent's descendants reach its memory (Yama's
//! `PR_SET_PTRACER`) while a zero-copy pool lives; [`probe_target`] is what a
//! new worker reads to find out whether the kernel lets it. See
//! `docs/ARCHITECTURE.md`, "Zero-copy maps".

use crate::remote::PROBE_MAGIC;
use crate::sync::fork_mutex::ForkMutex;
use std::sync::atomic::AtomicU64;

/// A word of the parent's private memory that new workers read and write back
/// unchanged, to find out whether the kernel lets them.
static PROBE_TARGET: AtomicU64 = AtomicU64::new(PROBE_MAGIC);

/// The address of the probe word in this process.
pub(crate) fn probe_target() -> u64 {
    PROBE_TARGET.as_ptr() as u64
}

/// `(pid, n)`: process `pid` has `n` pools holding a grant; the first sets the
/// tracer, the last clears it. A fork child inherits the count but neither
/// the pools nor the declaration (Yama keeps it per process), so it starts
/// again from zero; and a ForkMutex, since a parent thread may have held it at
/// the fork.
static GRANTS: ForkMutex<(u32, usize)> = ForkMutex::new((0, 0));

/// While it lives, this process's descendants may read and write its memory
/// under Yama's `ptrace_scope=1` (`prctl(PR_SET_PTRACER, getpid())`). Yama keeps
/// one declared tracer per process: the first grant replaces any tracer the
/// program declared itself, and the last one to go clears it
/// (`PR_SET_PTRACER, 0`), since the old value cannot be read back.
#[derive(Debug)]
pub(crate) struct PtracerGrant(());

impl PtracerGrant {
    pub(crate) fn acquire() -> PtracerGrant {
        let mut grants = GRANTS.lock();
        let me = std::process::id();
        if grants.0 != me {
            *grants = (me, 0);
        }
        if grants.1 == 0 {
            // Fails with EINVAL where Yama is not built in, and then nothing
            // is needed.
            let _ = rustix::process::set_ptracer(rustix::process::PTracer::ProcessID(
                rustix::process::getpid(),
            ));
        }
        grants.1 += 1;
        PtracerGrant(())
    }
}

impl Drop for PtracerGrant {
    fn drop(&mut self) {
        let mut grants = GRANTS.lock();
        if grants.0 != std::process::id() {
            return; // a grant of the process this one was forked from
        }
        grants.1 -= 1;
        if grants.1 == 0 {
            // Withdraws the declaration (`PR_SET_PTRACER, 0`).
            let _ = rustix::process::set_ptracer(rustix::process::PTracer::None);
        }
    }
}
