//! Data stopped arriving: a slice whose baseline expects λ events a minute has sent none
//! for long enough that chance explains it less than once in e^`threshold` (the zero-event
//! probability of the silent run is e^(−Σλ)). Unlike a drop, where traffic goes on at a
//! worse rate, a silence is nothing at all; it ends with the first event.

use super::{Incident, SeasonalRate};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SilenceParams {
    /// −ln of the chance below which a silent run is not chance. Default 12.
    pub threshold: f64,
    /// Events per minute this hour of the week must normally bring before its silence can
    /// fire (a trickle is silent often). Default 1.
    pub min_events_per_minute: f64,
    /// Minutes of history (decayed) the hour of the week needs. With a weekly decay of
    /// 0.5 the past weeks of an hour weigh 60 · (1/2 + 1/4 + …) < 60 minutes when it
    /// starts: 40 is two weeks of it. Default 40.
    pub min_baseline_minutes: f64,
    pub weekly_decay: f64,
}

impl Default for SilenceParams {
    fn default() -> Self {
        SilenceParams {
            threshold: 12.0,
            min_events_per_minute: 1.0,
            min_baseline_minutes: 40.0,
            weekly_decay: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    params: SilenceParams,
    /// Events over minutes, by hour of the week.
    volume: SeasonalRate,
    /// Events expected over the current silent run.
    expected: f64,
    /// The silent run's minutes, learned (as zeros) when it ends without an incident.
    silent: Vec<i64>,
    firing: bool,
}

impl Silence {
    pub fn new(params: SilenceParams) -> Self {
        Silence {
            volume: SeasonalRate::new(params.weekly_decay),
            params,
            expected: 0.0,
            silent: Vec::new(),
            firing: false,
        }
    }

    /// The minute's final event count; minutes in order, each once (a minute whose
    /// watermark has not passed is not passed at all).
    pub fn observe(&mut self, minute: i64, events: u64) -> Option<Incident> {
        let rate = self
            .volume
            .expected_in_hour(minute, self.params.min_baseline_minutes)
            .map(|(r, _)| r)
            .filter(|r| *r >= self.params.min_events_per_minute);
        if events > 0 {
            // Zeros are normal too (a slice of one event a minute has a third of them): a
            // silent run that ended without an incident is learned; one that fired is not.
            for m in self.silent.drain(..) {
                if !self.firing {
                    self.volume.observe(m, 0.0, 1.0);
                }
            }
            self.volume.observe(minute, events as f64, 1.0);
            self.expected = 0.0;
            if self.firing {
                self.firing = false;
                return Some(Incident::Resolved { minute });
            }
            return None;
        }
        let Some(rate) = rate else {
            if !self.firing {
                self.volume.observe(minute, 0.0, 1.0);
            }
            return None;
        };
        if !self.firing {
            self.silent.push(minute);
        }
        self.expected += rate;
        let evidence = self.expected;
        if self.firing {
            return Some(Incident::Ongoing {
                minute,
                observed: 0.0,
                expected: evidence,
                trials: 0.0,
                evidence,
            });
        }
        (evidence >= self.params.threshold).then(|| {
            self.firing = true;
            self.silent.clear();
            Incident::Started {
                minute,
                observed: 0.0,
                expected: evidence,
                trials: 0.0,
                evidence,
            }
        })
    }
}
