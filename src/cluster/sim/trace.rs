//! A seed's run written out as a log, for finding where two runs part: with
//! `VIBEMQ_SIM_TRACE=FILE`, every event of the run (the nodes' own logs and turmoil's sends and
//! deliveries, at `VIBEMQ_SIM_TRACE_LEVEL`, "debug" unless set) goes to FILE, stamped with the
//! virtual time. Two traces of one seed are equal line for line, apart from the bytes of
//! sealed frames (their nonces are the operating system's).

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Virtual time since the simulation began (empty outside a simulated host).
struct VirtualTime;

impl FormatTime for VirtualTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>8.3}", t.as_secs_f64()),
            None => write!(w, "{:>8}", "-"),
        }
    }
}

/// Sends this thread's events to the file `VIBEMQ_SIM_TRACE` names until the guard drops;
/// nothing when it is not set.
pub(super) fn to_file_if_asked() -> Option<tracing::subscriber::DefaultGuard> {
    let path = std::env::var("VIBEMQ_SIM_TRACE").ok()?;
    let file = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("VIBEMQ_SIM_TRACE={path}: cannot create: {e}"));
    let level = std::env::var("VIBEMQ_SIM_TRACE_LEVEL").unwrap_or_else(|_| "debug".into());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_timer(VirtualTime)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .finish();
    Some(tracing::subscriber::set_default(subscriber))
}
