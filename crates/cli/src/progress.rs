//! Progress bars with an ETA for the long steps (key generation, key preparation, FHE
//! runs), drawn only when stderr is a terminal: in a log, the one-line summaries the
//! commands print before and after each step are all that appears.

use std::io::IsTerminal;
use std::sync::Mutex;

use fhec_runtime::{Client, EvaluationKey, SecretKey};
use indicatif::{ProgressBar, ProgressStyle};

/// Generates a client's keys behind a bar over the bootstrap-key bits (on a terminal).
pub fn keygen(client: &Client) -> (SecretKey, EvaluationKey) {
    let bar = Bar::new(
        "keygen",
        fhec_backend_tfhe::bootstrap_key_bits(&client.part().keys),
        "key bits",
    );
    let keys = client.keygen_with_progress(&bar.report());
    keys
}

/// A bar over `total` units, or nothing when stderr is not a terminal.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(what: &str, total: usize, unit: &str) -> Bar {
        if total == 0 || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::new(total as u64);
        let template = format!(
            "{{prefix}} [{{bar:32}}] {{pos}}/{{len}} {unit} · {{elapsed}} elapsed, ETA {{eta}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_string());
        Bar(Some(bar))
    }

    /// Moves the bar to `done` units (callable from any thread).
    pub fn set(&self, done: usize) {
        if let Some(b) = &self.0 {
            b.set_position(done as u64);
        }
    }

    /// A line on stderr, above the bar when there is one.
    pub fn println(&self, line: &str) {
        match &self.0 {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// The `(done, total)` callback fhec's libraries report through.
    pub fn report(&self) -> impl Fn(usize, usize) + Sync + '_ {
        move |done, _| self.set(done)
    }

    /// A callback for an FHE run: `(sample, bootstraps done in it)`, `pbs` per sample.
    pub fn report_samples(&self, samples: usize) -> impl Fn(usize, usize) + Sync + '_ {
        let per_sample = Mutex::new(vec![0usize; samples]);
        move |i, done| {
            let mut p = per_sample.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = p.get_mut(i) {
                *d = done;
            }
            self.set(p.iter().sum());
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
