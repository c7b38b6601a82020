use super::{
    EdgeStyle, Flowchart, Line, NodeStyle, Shape, escape,
    map::{self, End, MapEdge, OutsideKind},
};
use crate::graph::WorkloadRef;

#[test]
fn plain_labels_stay_as_they_are() {
    assert_eq!(
        escape("shop/Deployment/web-1.v2 TCP 80, UDP 53"),
        "shop/Deployment/web-1.v2 TCP 80, UDP 53"
    );
}

#[test]
fn reserved_characters_become_entity_codes() {
    assert_eq!(escape("\"quoted\""), "#34;quoted#34;");
    assert_eq!(escape("a[b]{c}(d)"), "a#91;b#93;#123;c#125;#40;d#41;");
    assert_eq!(escape("#;:|"), "#35;#59;#58;#124;");
    assert_eq!(escape("<b>x</b>"), "#60;b#62;x#60;/b#62;");
    assert_eq!(escape("`code`"), "#96;code#96;");
    assert_eq!(escape("two\nlines\r\t"), "two#10;lines#13;#9;");
    assert_eq!(escape("&amp;'%\\"), "#38;amp#59;#39;#37;#92;");
}

#[test]
fn unicode_becomes_entity_codes() {
    assert_eq!(escape("café"), "caf#233;");
    assert_eq!(escape("名前🙂"), "#21517;#21069;#128578;");
}

#[test]
fn an_escaped_label_holds_no_reserved_character() {
    let nasty = "end\"]) --> x{{y}} ;#:|<>`\n\u{2028}é click n0 call x()";
    let escaped = escape(nasty);
    assert!(
        escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ./-_,=+*@#;".contains(c)),
        "{escaped}"
    );
    let mut chart = Flowchart::new();
    let a = chart.node(nasty, Shape::Box, None);
    let b = chart.node(nasty, Shape::Hexagon, None);
    let style = EdgeStyle {
        line: Line::Solid,
        css: "",
    };
    chart.edge(a, b, nasty, style);
    let text = chart.render();
    // Ids are generated; each label is one quoted string on its own line.
    assert_eq!(text.lines().count(), 4);
    assert_eq!(text.matches('"').count(), 6);
    assert!(text.starts_with("flowchart LR\n  n0[\"end#34;#93;#41; --#62; x#123;#123;y#125;#125; #59;#35;#58;#124;#60;#62;#96;#10;#8232;#233; click n0 call x#40;#41;\"]\n"));
}

#[test]
fn a_small_chart_renders_exactly() {
    let mut chart = Flowchart::new();
    let web = chart.node("Deployment/web", Shape::Box, None);
    let db = chart.node("data/StatefulSet/db", Shape::Stadium, Some(OTHER));
    let world = chart.node("192.0.2.1 (world)", Shape::Hexagon, Some(OUT));
    let red = EdgeStyle {
        line: Line::Thick,
        css: "stroke:red",
    };
    let plain = EdgeStyle {
        line: Line::Solid,
        css: "",
    };
    chart.edge(web, db, "TCP 5432", red);
    chart.edge(web, world, "", plain);
    chart.edge(db, world, "TCP 443", red);
    chart.node("and 2 more edges", Shape::Note, None);
    assert_eq!(
        chart.render(),
        "flowchart LR
  n0[\"Deployment/web\"]
  n1([\"data/StatefulSet/db\"])
  n2{{\"192.0.2.1 #40;world#41;\"}}
  n3>\"and 2 more edges\"]
  n0 ==>|\"TCP 5432\"| n1
  n0 --> n2
  n1 ==>|\"TCP 443\"| n2
  classDef other fill:#eee
  class n1 other
  classDef out fill:#ffe
  class n2 out
  linkStyle 0,2 stroke:red
"
    );
}

const OTHER: NodeStyle = NodeStyle {
    name: "other",
    css: "fill:#eee",
};

const OUT: NodeStyle = NodeStyle {
    name: "out",
    css: "fill:#ffe",
};

fn workload(namespace: &str, name: &str) -> End {
    End::Workload(WorkloadRef {
        namespace: namespace.to_owned(),
        kind: "Deployment".to_owned(),
        name: name.to_owned(),
    })
}

#[test]
fn ends_parse_as_workloads_or_addresses() {
    assert_eq!(End::parse("shop/Deployment/web"), workload("shop", "web"));
    for address in [
        "10.0.0.0/8",
        "192.0.2.1 (world)",
        "fd00::/64",
        "a/b/c/d",
        "Shop/Deployment/web",
        "shop/Deployment/../etc",
        "",
    ] {
        assert_eq!(
            End::parse(address),
            End::Outside {
                label: address.to_owned(),
                kind: OutsideKind::Address
            }
        );
    }
}

#[test]
fn edges_with_the_same_ends_and_kind_merge_and_sort_findings_first() {
    let edge = |client: &str, server: &str, port: &str, weight, kind| {
        MapEdge::new(
            workload("shop", client),
            workload("shop", server),
            port.to_owned(),
            weight,
            kind,
        )
    };
    let merged = map::merged([
        edge("web", "api", "TCP 80", 10, map::EdgeKind::Allowed),
        edge("web", "db", "TCP 5432", 5, map::EdgeKind::Allowed),
        edge("web", "api", "TCP 8080", 1, map::EdgeKind::Allowed),
        edge("web", "db", "TCP 5432", 0, map::EdgeKind::CrossTenant),
        edge("a", "b", "TCP 1", 11, map::EdgeKind::Allowed),
    ]);
    let summary: Vec<(String, String, Vec<String>, u128)> = merged
        .iter()
        .map(|edge| {
            let name = |end: &End| match end {
                End::Workload(workload) => workload.name.clone(),
                End::Outside { label, .. } => label.clone(),
            };
            (
                name(&edge.client),
                name(&edge.server),
                edge.ports.iter().cloned().collect(),
                edge.weight,
            )
        })
        .collect();
    let row = |a: &str, b: &str, ports: &[&str], weight| {
        (
            a.to_owned(),
            b.to_owned(),
            ports.iter().map(|port| (*port).to_owned()).collect(),
            weight,
        )
    };
    assert_eq!(
        summary,
        vec![
            row("web", "db", &["TCP 5432"], 0),
            row("a", "b", &["TCP 1"], 11),
            row("web", "api", &["TCP 80", "TCP 8080"], 11),
            row("web", "db", &["TCP 5432"], 5),
        ]
    );
}

#[test]
fn a_namespace_map_draws_outside_peers_apart() {
    let edges = map::merged([
        MapEdge::new(
            workload("shop", "web"),
            workload("shop", "api"),
            "TCP 8080".to_owned(),
            300,
            map::EdgeKind::Allowed,
        ),
        MapEdge::new(
            workload("shop", "api"),
            workload("data", "db"),
            "TCP 5432".to_owned(),
            200,
            map::EdgeKind::CrossTenant,
        ),
        MapEdge::new(
            workload("shop", "api"),
            End::Outside {
                label: "node-local DNS 169.254.20.10".to_owned(),
                kind: OutsideKind::NodeLocalDns,
            },
            "UDP 53".to_owned(),
            100,
            map::EdgeKind::Allowed,
        ),
        MapEdge::new(
            End::Outside {
                label: "api.example.com (192.0.2.7)".to_owned(),
                kind: OutsideKind::Address,
            },
            workload("shop", "web"),
            "TCP 443".to_owned(),
            50,
            map::EdgeKind::Allowed,
        ),
        MapEdge::new(
            workload("other", "x"),
            workload("other", "y"),
            "TCP 1".to_owned(),
            1_000,
            map::EdgeKind::Allowed,
        ),
    ]);
    assert_eq!(
        map::namespace_chart("shop", &edges).render(),
        "flowchart LR
  n0[\"Deployment/api\"]
  n1([\"data/Deployment/db\"])
  n2[\"Deployment/web\"]
  n3{{\"node-local DNS 169.254.20.10\"}}
  n4{{\"api.example.com #40;192.0.2.7#41;\"}}
  n0 ==>|\"TCP 5432\"| n1
  n2 -->|\"TCP 8080\"| n0
  n0 -->|\"UDP 53\"| n3
  n4 -->|\"TCP 443\"| n2
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1 otherNamespace
  classDef nodeLocalDns fill:#e8f4fd,stroke:#3b82c4
  class n3 nodeLocalDns
  classDef outside fill:#fff8e1,stroke:#b08800
  class n4 outside
  linkStyle 0 stroke:#d7263d,stroke-width:3px
"
    );
    assert_eq!(
        map::namespaces(&edges).into_iter().collect::<Vec<_>>(),
        ["data", "other", "shop"]
    );
}

#[test]
fn a_large_namespace_keeps_the_top_edges_and_counts_the_rest() {
    let edges = map::merged((0..45u16).map(|index| {
        MapEdge::new(
            workload("big", &format!("client-{index:02}")),
            workload("big", "server"),
            format!("TCP {}", 1000 + index),
            u128::from(index),
            map::EdgeKind::Allowed,
        )
    }));
    let text = map::namespace_chart("big", &edges).render();
    // The 40 heaviest: clients 44 down to 05; then the note.
    assert!(text.contains("  n0[\"Deployment/client-44\"]\n  n1[\"Deployment/server\"]\n"));
    assert!(text.contains("  n40[\"Deployment/client-05\"]\n  n41>\"and 5 more edges\"]\n"));
    assert!(!text.contains("client-04"));
    assert_eq!(text.matches("-->").count(), map::MAX_EDGES);
    assert!(text.ends_with(
        "  classDef summary fill:#ffffff,stroke:#999999,stroke-dasharray:2 2\n  class n41 summary\n"
    ));
}

#[test]
fn a_label_lists_six_ports_then_counts() {
    let mut edge = MapEdge::new(
        workload("a", "b"),
        workload("a", "c"),
        "TCP 1".to_owned(),
        0,
        map::EdgeKind::Allowed,
    );
    edge.ports.extend((2..=9).map(|port| format!("TCP {port}")));
    let text = map::namespace_chart("a", &[edge]).render();
    assert!(
        text.contains("n0 -->|\"TCP 1, TCP 2, TCP 3, TCP 4, TCP 5, TCP 6, +3 more\"| n1\n"),
        "{text}"
    );
}

#[test]
fn a_section_has_a_legend_and_one_block_per_namespace() {
    let edges = map::merged([MapEdge::new(
        workload("shop", "web"),
        workload("data", "db"),
        "TCP 5432".to_owned(),
        7,
        map::EdgeKind::New,
    )]);
    let text = map::section("##", &edges, map::namespaces(&edges), "bytes");
    assert_eq!(
        text,
        "
## Service map

Per namespace: its workloads (boxes), other namespaces' workloads (rounded, dashed) and addresses, names and node-local DNS (hexagons); edges from client to server, labelled with ports: green lines: opened. At most 40 edges each, findings first, then by bytes.

### `data`

```mermaid
flowchart LR
  n0([\"shop/Deployment/web\"])
  n1[\"Deployment/db\"]
  n0 -->|\"TCP 5432\"| n1
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n0 otherNamespace
  linkStyle 0 stroke:#2a9d4b,stroke-width:2px
```

### `shop`

```mermaid
flowchart LR
  n0[\"Deployment/web\"]
  n1([\"data/Deployment/db\"])
  n0 -->|\"TCP 5432\"| n1
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1 otherNamespace
  linkStyle 0 stroke:#2a9d4b,stroke-width:2px
```
"
    );
    assert_eq!(map::section("##", &[], ["shop"], "bytes"), "");
}

#[test]
fn the_diff_map_tells_opened_cross_tenant_closed_and_broken_apart() {
    use crate::{
        check::EdgeDenial,
        diff::{PathChange, PathKind, PolicyDiff},
    };
    let path = |client: &str, server: &str, kind, ports: &str, size| PathChange {
        client: client.to_owned(),
        server: server.to_owned(),
        kind,
        client_tenant: None,
        server_tenant: None,
        ports: ports.to_owned(),
        pod_pairs: 1,
        size,
    };
    let diff = PolicyDiff {
        opened: vec![
            path(
                "b/Deployment/web",
                "a/Deployment/api",
                PathKind::CrossTenant,
                "TCP 8080",
                1,
            ),
            path(
                "a/Deployment/web",
                "a/Deployment/api",
                PathKind::Unobserved,
                "TCP 1-79; UDP any",
                65_614,
            ),
        ],
        closed: vec![path(
            "a/Deployment/web",
            "a/Deployment/api",
            PathKind::Observed,
            "TCP 80",
            1,
        )],
        broken: vec![EdgeDenial {
            client: "a/Deployment/web".to_owned(),
            server: "192.0.2.1 (world)".to_owned(),
            protocol: flow_model::record::Protocol(6),
            port: 443,
            blocked_by: vec!["egress of a/web-1".to_owned()],
            connections: 3,
            last_seen: flow_model::record::Timestamp(std::time::SystemTime::UNIX_EPOCH),
        }],
        ..PolicyDiff::default()
    };
    let text = super::reports::diff_section(&diff);
    let a = text
        .split("#### `a`\n\n")
        .nth(1)
        .expect("a map of namespace a");
    assert_eq!(
        a.split("\n\n").next(),
        Some(
            "```mermaid
flowchart LR
  n0[\"Deployment/web\"]
  n1{{\"192.0.2.1 #40;world#41;\"}}
  n2([\"b/Deployment/web\"])
  n3[\"Deployment/api\"]
  n0 --x|\"TCP 443\"| n1
  n2 ==>|\"TCP 8080\"| n3
  n0 -->|\"TCP 1-79, UDP any\"| n3
  n0 -.->|\"TCP 80\"| n3
  classDef outside fill:#fff8e1,stroke:#b08800
  class n1 outside
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n2 otherNamespace
  linkStyle 0 stroke:#e07a00,stroke-width:2px
  linkStyle 1 stroke:#d7263d,stroke-width:3px
  linkStyle 2 stroke:#2a9d4b,stroke-width:2px
  linkStyle 3 stroke:#888888
```"
        )
    );
    assert!(text.starts_with("\n### Service map\n\n"), "{text}");
    assert!(text.contains("\n#### `b`\n"), "{text}");
}
