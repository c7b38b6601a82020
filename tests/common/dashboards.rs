//! The Grafana dashboards of `deploy/monitoring/dashboards/`, read as Grafana
//! would: their template variables, their panels' queries, and those queries
//! with the variables substituted so that Prometheus can run them.
//!
//! The substitution is what Grafana sends when every filter is left at "All":
//!
//! - a filter variable (`$namespace`, `$tenant`, `$instance`: multi-value,
//!   "All" sent as the regex `.*`) may appear only as a whole regex matcher,
//!   `label=~"$name"`, and becomes `label=~".*"`; any other use is refused,
//!   since Grafana would send a regex where PromQL expects a literal.
//!   [`substitute_selected`] sends one selected value instead, as itself:
//!   what Grafana sends for a value without regex metacharacters;
//! - `$__rate_interval` becomes `1m`, what Grafana computes for a Prometheus
//!   data source left at its default 15 s scrape interval (four intervals);
//! - `$` then a digit is a `label_replace` back-reference, left as is;
//! - anything else after a `$` (another variable, the `${name}` form) is
//!   refused.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// What every panel and target names as its data source.
pub const DATASOURCE_UID: &str = "${datasource}";

/// What `$__rate_interval` becomes (see the module's documentation).
pub const RATE_INTERVAL: &str = "1m";

/// A dashboard file, parsed.
pub struct Dashboard {
    /// Its file name.
    pub file: String,
    pub json: Value,
}

/// A template variable that filters (a `query` variable).
#[derive(Debug, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    /// The metric and label of its `label_values(metric, label)` query.
    pub metric: String,
    pub label: String,
}

/// One target of one panel.
#[derive(Debug)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    /// As written in the dashboard.
    pub expr: String,
    /// `{{label}}` names of its legend.
    pub legend_labels: Vec<String>,
    /// An instant (table) query rather than a range.
    pub instant: bool,
}

/// The dashboards directory.
pub fn directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/dashboards")
}

/// Every `*.json` in the dashboards directory, by file name.
pub fn load() -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let json =
                serde_json::from_str(&text).unwrap_or_else(|error| panic!("{file}: {error}"));
            Dashboard { file, json }
        })
        .collect()
}

/// Whether `value` is `{"type": "prometheus", "uid": "${datasource}"}`.
pub fn is_chosen_prometheus(value: &Value) -> bool {
    value["type"] == "prometheus" && value["uid"] == DATASOURCE_UID
}

/// `label_values(metric, label)` split, or `None`.
pub fn label_values(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (metric, label) = inner.split_once(',')?;
    let (metric, label) = (metric.trim(), label.trim());
    let name = |text: &str| {
        !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    (name(metric) && name(label)).then(|| (metric.to_owned(), label.to_owned()))
}

impl Dashboard {
    /// The template variables' list.
    fn variables(&self) -> &[Value] {
        self.json["templating"]["list"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// Checks the data source variable: one `datasource` variable of
    /// Prometheus data sources, named `datasource`.
    pub fn check_datasource_variable(&self) -> Result<(), String> {
        let found: Vec<&Value> = self
            .variables()
            .iter()
            .filter(|variable| variable["type"] == "datasource")
            .collect();
        match found.as_slice() {
            [variable] if variable["name"] == "datasource" && variable["query"] == "prometheus" => {
                Ok(())
            }
            _ => Err(format!(
                "{}: wants exactly one variable `datasource` of type datasource, query prometheus; has {found:?}",
                self.file
            )),
        }
    }

    /// The filter variables; each must query the chosen data source with
    /// `label_values(metric, label)`, be multi-value, and send "All" as `.*`.
    pub fn filters(&self) -> Result<Vec<Filter>, String> {
        self.variables()
            .iter()
            .filter(|variable| variable["type"] != "datasource")
            .map(|variable| {
                let name = variable["name"].as_str().unwrap_or_default();
                let fail = |what: &str| Err(format!("{}: variable {name:?}: {what}", self.file));
                if variable["type"] != "query" {
                    return fail("not a query variable");
                }
                if !is_chosen_prometheus(&variable["datasource"]) {
                    return fail("does not query ${datasource}");
                }
                if variable["multi"] != true
                    || variable["includeAll"] != true
                    || variable["allValue"] != ".*"
                {
                    return fail("must be multi-value with All sent as .*");
                }
                // Grafana keeps the query as a string or as {query: ...}.
                let query = variable["query"]
                    .as_str()
                    .or_else(|| variable["query"]["query"].as_str())
                    .unwrap_or_default();
                let Some((metric, label)) = label_values(query) else {
                    return fail("query is not label_values(metric, label)");
                };
                Ok(Filter {
                    name: name.to_owned(),
                    metric,
                    label,
                })
            })
            .collect()
    }

    /// Every panel's targets; each panel and target must use the chosen
    /// data source and have an expression.
    pub fn queries(&self) -> Result<Vec<PanelQuery>, String> {
        let panels = self.json["panels"]
            .as_array()
            .ok_or_else(|| format!("{}: no panels", self.file))?;
        let mut queries = Vec::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let fail = |what: &str| format!("{}: panel {title:?}: {what}", self.file);
            if !is_chosen_prometheus(&panel["datasource"]) {
                return Err(fail("data source is not ${datasource}"));
            }
            let targets = panel["targets"]
                .as_array()
                .filter(|targets| !targets.is_empty())
                .ok_or_else(|| fail("no targets"))?;
            for target in targets {
                let ref_id = target["refId"].as_str().unwrap_or_default().to_owned();
                if !is_chosen_prometheus(&target["datasource"]) {
                    return Err(fail(&format!(
                        "target {ref_id}: data source is not ${{datasource}}"
                    )));
                }
                let expr = target["expr"]
                    .as_str()
                    .filter(|expr| !expr.trim().is_empty())
                    .ok_or_else(|| fail(&format!("target {ref_id}: no expr")))?;
                queries.push(PanelQuery {
                    dashboard: self.file.clone(),
                    panel: title.clone(),
                    ref_id,
                    expr: expr.to_owned(),
                    legend_labels: legend_labels(target["legendFormat"].as_str().unwrap_or("")),
                    instant: target["instant"] == true,
                });
            }
        }
        Ok(queries)
    }
}

/// The `{{label}}` names of a legend format.
fn legend_labels(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_owned())
        .collect()
}

/// `expr` with the variables substituted (see the module's documentation);
/// `filters` names the dashboard's filter variables, all left at "All".
pub fn substitute(expr: &str, filters: &[&str]) -> Result<String, String> {
    substitute_selected(expr, filters, &[])
}

/// As [`substitute`], with one value selected in some filters: `selected`
/// holds (variable, value) pairs; a value with regex metacharacters is
/// refused, since Grafana would escape it.
pub fn substitute_selected(
    expr: &str,
    filters: &[&str],
    selected: &[(&str, &str)],
) -> Result<String, String> {
    if let Some((name, value)) = selected.iter().find(|(_, value)| {
        value.is_empty()
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        return Err(format!("${name}: {value:?} is not a plain value"));
    }
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            out.push('$');
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        rest = &rest[end..];
        if name == "__rate_interval" {
            out.push_str(RATE_INTERVAL);
        } else if filters.contains(&name) {
            if !(out.ends_with("=~\"") && rest.starts_with('"')) {
                return Err(format!(
                    "${name} is used other than as a whole regex matcher label=~\"${name}\" in {expr}"
                ));
            }
            let value = selected
                .iter()
                .find(|(selected, _)| *selected == name)
                .map_or(".*", |(_, value)| value);
            out.push_str(value);
        } else if name.is_empty() {
            return Err(format!(
                "a `$` not followed by a variable name (the ${{name}} form is not used) in {expr}"
            ));
        } else {
            return Err(format!("unknown variable ${name} in {expr}"));
        }
    }
    out.push_str(rest);
    Ok(out)
}
