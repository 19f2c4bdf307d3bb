//! The chart's alerts and dashboard against the metrics the binaries export: every PromQL
//! expression they hold, the metric names each uses (parsed with `promql-parser`), and the
//! names a Prometheus exposition offers.

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn chart_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../charts/loka")
        .join(rel)
}

/// Every PromQL expression of the chart's alerts and dashboard: (where, expression).
pub fn chart_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let alerts: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_file("alerts/loka-stratum.yaml")).expect("alerts file"),
    )
    .expect("alerts YAML");
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            out.push((format!("alert {name}"), expr.to_string()));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart_file("dashboards/loka-stratum.json"))
            .expect("dashboard file"),
    )
    .expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            let expr = target["expr"].as_str().expect("target expr");
            out.push((format!("panel {title:?}"), expr.to_string()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(<selector>, label): the selector is PromQL.
            if let Some(sel) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(s, _)| s)
            {
                out.push((format!("variable {}", var["name"]), sel.to_string()));
            }
        }
    }
    out
}

/// The metric names `expr` selects. Grafana's variables are replaced by values PromQL takes
/// first (`$__rate_interval` by `5m`, a label variable by `.*`).
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let expr = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$namespace", ".*")
        .replace("$pod", ".*");
    let ast = parser::parse(&expr)?;
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            let vs = match e {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(vs) = vs {
                let name = vs.name.clone().ok_or("a selector without a metric name")?;
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let mut v = Names(BTreeSet::new());
    walk_expr(&mut v, &ast)?;
    Ok(v.0)
}

/// The sample names an exposition (Prometheus text or OpenMetrics) offers, families without
/// samples included (a counter `x` as `x_total`, a histogram as `_bucket`, `_sum`, `_count`).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Names of `prefix` the chart's queries use that `exported` lacks, as "where: name"; and
/// the queries that do not parse. Empty when all is well.
pub fn missing_from(prefix: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (at, expr) in chart_queries() {
        match metric_names(&expr) {
            Ok(names) => {
                for n in names {
                    if n.starts_with(prefix) && !exported.contains(&n) {
                        wrong.push(format!("{at}: {n}"));
                    }
                }
            }
            Err(e) => wrong.push(format!("{at}: does not parse: {e}\n  {expr}")),
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_selectors_in_every_position() {
        let n = metric_names(
            "sum by (le) (rate(a_bucket{x=\"y\"}[$__rate_interval])) / ignoring(z) b > 0 and on() c_total",
        )
        .unwrap();
        assert_eq!(
            n.into_iter().collect::<Vec<_>>(),
            ["a_bucket", "b", "c_total"]
        );
        assert!(metric_names("rate(x[5m]").is_err());
    }

    #[test]
    fn families_without_samples_still_count() {
        let text = "# TYPE a counter\n# TYPE h histogram\n# TYPE g gauge\nb_total{l=\"1\"} 3\n";
        let got: Vec<_> = exported_names(text).into_iter().collect();
        assert_eq!(
            got,
            ["a_total", "b_total", "g", "h_bucket", "h_count", "h_sum"]
        );
    }

    #[test]
    fn the_chart_holds_queries_and_every_one_parses() {
        let q = chart_queries();
        assert!(q.iter().filter(|(at, _)| at.starts_with("alert")).count() >= 10);
        assert!(q.iter().filter(|(at, _)| at.starts_with("panel")).count() >= 15);
        for (at, expr) in &q {
            let names = metric_names(expr).unwrap_or_else(|e| panic!("{at}: {e}\n{expr}"));
            for n in names {
                assert!(
                    n.starts_with("loka_stratum_") || n.starts_with("loka_operator_") || n == "up",
                    "{at}: {n} is neither the proxy's, the operator's nor Prometheus' own"
                );
            }
        }
    }
}
