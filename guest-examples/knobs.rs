//! Faults and slowness on demand, for the tests of how map-reduce jobs
//! survive them: shared by the word count and the inverted index
//! (`#[path = "../../knobs.rs"] mod knobs;`). Nothing here is needed to
//! count words or index them.

use sandmill_sdk::Context;

/// What to do to a task.
#[derive(Default)]
pub struct Faults {
    /// Trap on the first attempt of about a third of the tasks (by a hash
    /// of what they read: a map's input, a reduce's partition name).
    pub fail_first_attempts: bool,
    /// Burn this many loop iterations first (to make tasks overlap).
    pub spin: u64,
    /// The input whose first attempt is a straggler, and how many more
    /// iterations it burns.
    pub slow_input: Option<String>,
    /// See `slow_input`.
    pub slow_spin: u64,
}

/// FNV-1a: a stable hash to pick the tasks that fail.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn spin(iterations: u64) {
    for i in 0..iterations {
        std::hint::black_box(i);
    }
}

impl Faults {
    /// Traps or burns time as asked, for the task that reads `what`.
    pub fn apply(&self, ctx: &Context, what: &[u8]) {
        if self.fail_first_attempts && ctx.attempt() == 0 && fnv(what) % 3 == 0 {
            // A trap, as a crashing guest's: the attempt fails, a retry runs.
            std::process::abort();
        }
        spin(self.spin);
        if ctx.attempt() == 0
            && self
                .slow_input
                .as_ref()
                .is_some_and(|s| *s == ctx.input_name())
        {
            spin(self.slow_spin);
        }
    }

    /// In a reduce: [`apply`](Self::apply) once per task (a fresh instance
    /// each), by the partition's name.
    pub fn apply_once(&self, ctx: &Context) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| self.apply(ctx, ctx.input_name().as_bytes()));
    }
}
