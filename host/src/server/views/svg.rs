//! Server-rendered SVG: the pipeline graph of a build, a job's duration trend and status badges.

use crate::status::Status;
use std::collections::HashMap;
use std::fmt::Write;

/// Escapes text for XML content and attribute values.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A node of the pipeline graph.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// Planned job id.
    pub id: String,
    /// Status now.
    pub status: Status,
    /// Planned ids it needs.
    pub needs: Vec<String>,
    /// Milliseconds it took (or has been running), when started.
    pub millis: Option<i64>,
}

const NODE_W: i64 = 180;
const NODE_H: i64 = 40;
const GAP_X: i64 = 60;
const GAP_Y: i64 = 16;
const PAD: i64 = 8;

/// DAG level of every node: 0 without needs, else one more than its deepest need. Needs that
/// name no node (or cycles, which a plan never has) count as level 0.
fn levels(nodes: &[GraphNode]) -> Vec<usize> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let mut level: Vec<Option<usize>> = vec![None; nodes.len()];
    fn visit(
        i: usize,
        nodes: &[GraphNode],
        index: &HashMap<&str, usize>,
        level: &mut Vec<Option<usize>>,
        depth: usize,
    ) -> usize {
        if let Some(l) = level[i] {
            return l;
        }
        if depth > nodes.len() {
            return 0;
        }
        let l = nodes[i]
            .needs
            .iter()
            .filter_map(|n| index.get(n.as_str()))
            .map(|&j| visit(j, nodes, index, level, depth + 1) + 1)
            .max()
            .unwrap_or(0);
        level[i] = Some(l);
        l
    }
    (0..nodes.len()).map(|i| visit(i, nodes, &index, &mut level, 0)).collect()
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

/// The build's jobs as an SVG graph: columns by DAG level, `needs` as edges, nodes coloured
/// by status (CSS classes `st-<status>`), each a link to the job's log.
pub fn graph(build_id: i64, nodes: &[GraphNode]) -> String {
    let lv = levels(nodes);
    let mut rows_in_level: Vec<i64> = Vec::new();
    let mut pos = Vec::with_capacity(nodes.len());
    for &l in &lv {
        if rows_in_level.len() <= l {
            rows_in_level.resize(l + 1, 0);
        }
        pos.push((l as i64, rows_in_level[l]));
        rows_in_level[l] += 1;
    }
    let cols = rows_in_level.len().max(1) as i64;
    let rows = rows_in_level.iter().copied().max().unwrap_or(1).max(1);
    let width = PAD * 2 + cols * NODE_W + (cols - 1) * GAP_X;
    let height = PAD * 2 + rows * NODE_H + (rows - 1) * GAP_Y;
    let xy = |(c, r): (i64, i64)| (PAD + c * (NODE_W + GAP_X), PAD + r * (NODE_H + GAP_Y));
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let mut s = String::with_capacity(400 + nodes.len() * 500);
    let _ = write!(
        s,
        r#"<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="pipeline graph">"#
    );
    for (i, n) in nodes.iter().enumerate() {
        for need in &n.needs {
            let Some(&j) = index.get(need.as_str()) else { continue };
            let (x1, y1) = xy(pos[j]);
            let (x2, y2) = xy(pos[i]);
            let (x1, y1, x2, y2) = (x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2);
            let mid = (x1 + x2) / 2;
            let _ = write!(
                s,
                r#"<path class="edge st-{}" d="M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}"/>"#,
                nodes[j].status.as_str()
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = xy(pos[i]);
        let id = xml_escape(&n.id);
        let href = format!("/builds/{build_id}/jobs/{}/log", crate::server::views::path_segment(&n.id));
        let took = n.millis.map(super::duration_text).unwrap_or_default();
        let _ = write!(
            s,
            r#"<a href="{href}" class="node st-{st}" data-job="{id}"><title>{id}: {st}</title><rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/><text x="{tx}" y="{ty}" class="node-name">{name}</text><text x="{tx}" y="{ty2}" class="node-meta">{st_text} {took}</text></a>"#,
            href = xml_escape(&href),
            st = n.status.as_str(),
            tx = x + 10,
            ty = y + 17,
            ty2 = y + 32,
            name = xml_escape(&short(&n.id, 24)),
            st_text = n.status.as_str().replace('_', " "),
        );
    }
    s.push_str("</svg>");
    s
}

/// One bar of the duration chart.
#[derive(Debug, Clone)]
pub struct TrendPoint {
    /// Build number.
    pub number: i64,
    /// Build id (the bar links to it).
    pub id: i64,
    /// Milliseconds it took.
    pub millis: i64,
    /// How it ended.
    pub status: Status,
}

/// A bar chart of build durations, oldest left, coloured by status.
pub fn trend(points: &[TrendPoint]) -> String {
    let (w, h, bar_gap) = (600i64, 120i64, 2i64);
    let max = points.iter().map(|p| p.millis).max().unwrap_or(1).max(1);
    let n = points.len().max(1) as i64;
    let bar_w = ((w - 20) / n - bar_gap).clamp(2, 40);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="trend" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="build durations, longest {}">"#,
        super::duration_text(max)
    );
    let _ = write!(s, r#"<text x="2" y="10" class="axis">{}</text>"#, super::duration_text(max));
    for (i, p) in points.iter().enumerate() {
        let bh = ((p.millis as f64 / max as f64) * (h - 20) as f64).round().max(1.0) as i64;
        let x = 10 + i as i64 * (bar_w + bar_gap);
        let _ = write!(
            s,
            r#"<a href="/builds/{id}"><rect class="bar st-{st}" x="{x}" y="{y}" width="{bar_w}" height="{bh}"><title>#{num}: {st}, {took}</title></rect></a>"#,
            id = p.id,
            st = p.status.as_str(),
            y = h - 4 - bh,
            num = p.number,
            took = super::duration_text(p.millis),
        );
    }
    s.push_str("</svg>");
    s
}

/// What a badge says about the newest build.
pub fn badge_message(status: Option<Status>) -> (&'static str, &'static str) {
    match status {
        None => ("unknown", "#9f9f9f"),
        Some(Status::Success) => ("passing", "#4c1"),
        Some(Status::Failure | Status::TimedOut | Status::Error) => ("failing", "#e05d44"),
        Some(Status::Queued | Status::Running) => ("running", "#dfb317"),
        Some(Status::Cancelled | Status::Skipped) => ("cancelled", "#9f9f9f"),
    }
}

/// Approximate width of text in the badge font (11px Verdana-like), in pixels.
fn text_width(text: &str) -> i64 {
    text.chars().map(|c| if c.is_ascii_uppercase() || c == 'm' || c == 'w' { 9 } else { 7 }).sum::<i64>()
}

/// A flat-style status badge: `label` on grey, `message` on `color`.
pub fn badge(label: &str, message: &str, color: &str) -> String {
    let (lw, mw) = (text_width(label) + 10, text_width(message) + 10);
    let total = lw + mw;
    let (label, message) = (xml_escape(label), xml_escape(message));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{label}: {message}"><title>{label}: {message}</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{mw}" height="20" fill="{color}"/><rect width="{total}" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="15" fill="#010101" fill-opacity=".3">{label}</text><text x="{lx}" y="14">{label}</text><text x="{mx}" y="15" fill="#010101" fill-opacity=".3">{message}</text><text x="{mx}" y="14">{message}</text></g></svg>"##,
        lx = lw / 2,
        mx = lw + mw / 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, needs: &[&str], status: Status) -> GraphNode {
        GraphNode { id: id.into(), status, needs: needs.iter().map(|s| s.to_string()).collect(), millis: Some(3000) }
    }

    #[test]
    fn graph_lays_out_by_level_with_an_edge_per_need() {
        let nodes = vec![
            node("build", &[], Status::Success),
            node("test (os=linux)", &["build"], Status::Running),
            node("lint", &[], Status::Failure),
            node("deploy", &["test (os=linux)", "lint"], Status::Queued),
        ];
        assert_eq!(levels(&nodes), vec![0, 1, 0, 2]);
        let svg = graph(7, &nodes);
        assert_eq!(svg.matches("<path class=\"edge").count(), 3);
        assert!(svg.contains(r#"class="node st-running" data-job="test (os=linux)""#), "{svg}");
        assert!(svg.contains("/builds/7/jobs/test%20%28os%3Dlinux%29/log"), "{svg}");
        // Three columns.
        assert!(svg.contains(&format!("width=\"{}\"", PAD * 2 + 3 * NODE_W + 2 * GAP_X)));
    }

    #[test]
    fn badges_escape_their_text() {
        let svg = badge("build", "<script>alert(1)</script>", "#4c1");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert_eq!(badge_message(Some(Status::TimedOut)).0, "failing");
        assert_eq!(badge_message(None).0, "unknown");
    }

    #[test]
    fn the_trend_has_a_bar_per_build() {
        let pts: Vec<TrendPoint> =
            (1..=5).map(|i| TrendPoint { number: i, id: i, millis: i * 10, status: Status::Success }).collect();
        let svg = trend(&pts);
        assert_eq!(svg.matches("<rect class=\"bar st-success\"").count(), 5);
    }
}
