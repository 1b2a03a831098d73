//! The overview page's numbers, read from the same Prometheus recorder `/metrics` renders:
//! messages by outcome, each plugin's verdicts, latency percentiles and failures, dead letters
//! by reason, publish-confirm latency, webhook outcomes and the held-queue depth; and, from the
//! recent refusals kept in memory, rejections by plugin and code. The page turns successive
//! totals into rates and small charts.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::exposition::{Sample, parse, quantile};
use super::{Shared, refuse};
use crate::clock::now_ms;
use crate::refusals::Refused;

/// Percentiles shown for each latency.
const QUANTILES: [(&str, f64); 3] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)];

pub(super) async fn show(State(console): State<Shared>) -> Response {
    let Some(metrics) = &console.metrics else {
        return refuse(StatusCode::NOT_FOUND, "metrics are recorded by another recorder in this process");
    };
    let mut overview = summarise(&parse(&metrics.render()));
    overview["recent_rejections"] = rejections_by_code(&console.refusals.newest_first());
    Json(overview).into_response()
}

/// `{plugin: {code: n}}` over the recent refusals: rejections by code, which the metrics do
/// not label (codes are the plugins' own, unbounded).
fn rejections_by_code(refusals: &[Refused]) -> Value {
    let mut counts = BTreeMap::<&str, BTreeMap<&str, u64>>::new();
    for refused in refusals.iter().filter(|r| r.outcome == "rejected") {
        *counts.entry(&refused.plugin).or_default().entry(&refused.code).or_default() += 1;
    }
    json!(counts)
}

/// The overview of `samples`.
fn summarise(samples: &[Sample]) -> Value {
    let named = |name: &'static str| samples.iter().filter(move |s| s.name == name);
    let by = |name: &'static str, label: &'static str| {
        let mut totals = BTreeMap::<String, f64>::new();
        for sample in named(name) {
            *totals.entry(sample.label(label).to_owned()).or_default() += sample.value;
        }
        totals
    };
    let mut plugins = BTreeMap::<String, Value>::new();
    for sample in named("inboxd_plugin_calls_total") {
        let entry = plugins.entry(sample.label("plugin").to_owned()).or_insert_with(|| json!({"verdicts": {}}));
        let verdicts = &mut entry["verdicts"][sample.label("outcome")];
        *verdicts = json!(verdicts.as_f64().unwrap_or(0.0) + sample.value);
    }
    for sample in named("inboxd_plugin_failures_total") {
        let entry = plugins.entry(sample.label("plugin").to_owned()).or_insert_with(|| json!({"verdicts": {}}));
        let failures = &mut entry["failures"][sample.label("kind")];
        *failures = json!(failures.as_f64().unwrap_or(0.0) + sample.value);
    }
    for (plugin, entry) in &mut plugins {
        let buckets = buckets(samples, "inboxd_plugin_call_seconds_bucket", |s| s.label("plugin") == plugin.as_str());
        entry["latency_seconds"] = percentiles(&buckets);
    }
    let confirm = buckets(samples, "inboxd_publish_confirm_seconds_bucket", |_| true);
    json!({
        "at_ms": now_ms(),
        "messages": by("inboxd_messages_total", "outcome"),
        "copies": named("inboxd_copies_published_total").map(|s| s.value).sum::<f64>(),
        "plugins": plugins,
        "dead_lettered": by("inboxd_dead_lettered_total", "reason"),
        "confirm_seconds": percentiles(&confirm),
        "confirms": confirm.last().map_or(0.0, |b| b.1),
        "webhooks": by("inboxd_webhooks_total", "outcome"),
        "held": named("inboxd_held_messages").map(|s| s.value).sum::<f64>(),
        "reloads": by("inboxd_policy_reloads_total", "outcome"),
    })
}

/// The cumulative buckets of the histogram `name` over the series `keep` selects, summed per
/// bound and sorted.
fn buckets(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
    let mut summed: Vec<(f64, f64)> = Vec::new();
    for sample in samples.iter().filter(|s| s.name == name && keep(s)) {
        let bound = match sample.label("le") {
            "+Inf" => f64::INFINITY,
            le => match le.parse() {
                Ok(bound) => bound,
                Err(_) => continue,
            },
        };
        match summed.iter_mut().find(|(b, _)| *b == bound) {
            Some(entry) => entry.1 += sample.value,
            None => summed.push((bound, sample.value)),
        }
    }
    summed.sort_by(|a, b| a.0.total_cmp(&b.0));
    summed
}

fn percentiles(buckets: &[(f64, f64)]) -> Value {
    QUANTILES.iter().map(|(name, q)| ((*name).to_owned(), json!(quantile(*q, buckets)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_verdicts_failures_and_latency_come_from_the_rendered_metrics() {
        let text = concat!(
            "inboxd_messages_total{kind=\"message\",outcome=\"delivered\"} 5\n",
            "inboxd_messages_total{kind=\"receipt\",outcome=\"delivered\"} 2\n",
            "inboxd_plugin_calls_total{plugin=\"m\",hook=\"on-message\",outcome=\"hold\"} 3\n",
            "inboxd_plugin_calls_total{plugin=\"m\",hook=\"on-deliver\",outcome=\"hold\"} 1\n",
            "inboxd_plugin_failures_total{plugin=\"m\",kind=\"timeout\",mode=\"fail-open\"} 2\n",
            "inboxd_plugin_call_seconds_bucket{plugin=\"m\",hook=\"on-message\",le=\"0.001\"} 4\n",
            "inboxd_plugin_call_seconds_bucket{plugin=\"m\",hook=\"on-message\",le=\"+Inf\"} 4\n",
            "inboxd_dead_lettered_total{reason=\"bad-json\"} 1\n",
        );
        let overview = summarise(&parse(text));
        assert_eq!(overview["messages"]["delivered"], 7.0);
        assert_eq!(overview["plugins"]["m"]["verdicts"]["hold"], 4.0);
        assert_eq!(overview["plugins"]["m"]["failures"]["timeout"], 2.0);
        assert!(overview["plugins"]["m"]["latency_seconds"]["p50"].as_f64().unwrap() <= 0.001);
        assert_eq!(overview["dead_lettered"]["bad-json"], 1.0);
        assert_eq!(overview["confirm_seconds"]["p99"], Value::Null);
    }

    #[test]
    fn recent_rejections_are_counted_by_plugin_and_code() {
        let refused = |outcome, plugin: &str, code: &str| Refused {
            at_ms: 0,
            message_id: String::new(),
            outcome,
            plugin: plugin.into(),
            code: code.into(),
            reason: String::new(),
            sender: String::new(),
            recipient: String::new(),
            body: None,
        };
        let recent =
            [refused("rejected", "w", "keyword"), refused("rejected", "w", "keyword"), refused("dropped", "", "")];
        assert_eq!(rejections_by_code(&recent), json!({"w": {"keyword": 2}}));
    }
}
