//! Publishes the core's accounting to Envoy metrics. Values are kept in the VM and pushed as
//! deltas on the tick, so traffic pays no metric hostcall per record.

use crate::accounting::{Counters, Gauges};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

const PREFIX: &str = "oob_mirror.";

#[derive(Debug, Default)]
pub struct Metrics {
    counter_ids: Vec<Option<u32>>,
    gauge_ids: Vec<Option<u32>>,
    published_counters: Counters,
    published_gauges: Gauges,
}

fn define(kind: MetricType, names: impl Iterator<Item = &'static str>) -> Vec<Option<u32>> {
    names
        .map(|name| hostcalls::define_metric(kind, &format!("{PREFIX}{name}")).ok())
        .collect()
}

impl Metrics {
    pub fn define() -> Self {
        Metrics {
            counter_ids: define(
                MetricType::Counter,
                Counters::default().named().into_iter().map(|(n, _)| n),
            ),
            gauge_ids: define(
                MetricType::Gauge,
                Gauges::default().named().into_iter().map(|(n, _)| n),
            ),
            ..Metrics::default()
        }
    }

    pub fn publish(&mut self, counters: &Counters, gauges: &Gauges) {
        if *counters != self.published_counters {
            let old = self.published_counters.named();
            for ((id, (_, new)), (_, old)) in self.counter_ids.iter().zip(counters.named()).zip(old)
            {
                if let (Some(id), true) = (id, new > old) {
                    let delta = i64::try_from(new - old).unwrap_or(i64::MAX);
                    let _ = hostcalls::increment_metric(*id, delta);
                }
            }
            self.published_counters = *counters;
        }
        if *gauges != self.published_gauges {
            // Gauges are shared by every worker's VM, so each adds its own change instead of
            // setting a value that would overwrite the other workers'.
            let old = self.published_gauges.named();
            for ((id, (_, new)), (_, old)) in self.gauge_ids.iter().zip(gauges.named()).zip(old) {
                if let (Some(id), true) = (id, new != old) {
                    let delta = i64::try_from(new)
                        .unwrap_or(i64::MAX)
                        .saturating_sub(i64::try_from(old).unwrap_or(i64::MAX));
                    let _ = hostcalls::increment_metric(*id, delta);
                }
            }
            self.published_gauges = *gauges;
        }
    }
}
