//! Exports into directories holding flow-agent's own files, files a person
//! edited, and files a person wrote.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::*;
use crate::{
    cluster::Selection,
    generate::{NamedAddress, PeerSpec, PortSpec, RuleSpec, WorkloadPolicy, render},
    graph::WorkloadRef,
};
use flow_model::record::Protocol;

const WEB: &str = "shop.allow-deployment-web.yaml";
const API: &str = "shop.allow-deployment-api.yaml";
const WEB_PROPOSED: &str = "shop.allow-deployment-web.yaml.proposed";

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app.to_owned())])
}

fn workload_policy(name: &str, ingress: Vec<RuleSpec>, egress: Vec<RuleSpec>) -> WorkloadPolicy {
    WorkloadPolicy {
        workload: WorkloadRef {
            namespace: "shop".to_owned(),
            kind: "Deployment".to_owned(),
            name: name.to_owned(),
        },
        name: format!("allow-deployment-{name}"),
        selection: Selection {
            labels: labels(name),
            also_selects: Vec::new(),
        },
        ingress,
        egress,
    }
}

/// `shop`: api calls web on TCP `port`; without `api`, web alone admits
/// nothing.
fn shop(port: u16, api: bool) -> Proposal {
    let rule = |peer: &str| RuleSpec {
        peers: vec![PeerSpec::Pods {
            namespace: "shop".into(),
            labels: Arc::new(labels(peer)),
        }],
        ports: vec![PortSpec {
            protocol: Protocol(6),
            port,
            end_port: None,
        }],
    };
    let mut policies = vec![workload_policy(
        "web",
        if api { vec![rule("api")] } else { Vec::new() },
        Vec::new(),
    )];
    let mut allowed = Vec::new();
    if api {
        policies.insert(0, workload_policy("api", Vec::new(), vec![rule("web")]));
        allowed = vec![
            format!("shop/Deployment/api egress to shop pods app=web TCP/{port}"),
            format!("shop/Deployment/web ingress from shop pods app=api TCP/{port}"),
        ];
    }
    Proposal {
        namespaces: vec!["shop".to_owned()],
        policies,
        notes: Vec::new(),
        allowed,
        edges: usize::from(api),
        rare: Vec::new(),
        left_out: Vec::new(),
        thresholds: Default::default(),
        resolvers: Default::default(),
        named_addresses: Vec::new(),
        map: Vec::new(),
        names_without_dns: Vec::new(),
    }
}

fn export_shop(directory: &Path, proposal: &Proposal) -> ExportSummary {
    export(directory, proposal, PolicyFormat::Networkpolicy).unwrap()
}

/// Every file in `directory`, hidden ones too.
fn contents(directory: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| {
            let path: PathBuf = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

#[test]
fn review_warns_of_names_without_dns_in_the_cilium_format_only() {
    let mut proposal = shop(8080, true);
    proposal.names_without_dns = vec!["shop/Deployment/api".to_owned()];
    let directory = tempfile::tempdir().unwrap();
    export(directory.path(), &proposal, PolicyFormat::Cilium).unwrap();
    assert_eq!(
        review_section(directory.path(), "Warning: names without DNS").unwrap(),
        "\nThese workloads reached outside addresses by name, but no DNS edge of theirs was learned (it was left out, or their queries went where the agents do not see). Their policies get no DNS rule, so Cilium's DNS proxy never sees their answers and their `toFQDNs` rules never match: allow their DNS (or learn longer) before applying.\n\n- `shop/Deployment/api`\n"
    );
    // NetworkPolicy allows such addresses by address: nothing to warn of.
    let directory = tempfile::tempdir().unwrap();
    export(directory.path(), &proposal, PolicyFormat::Networkpolicy).unwrap();
    assert_eq!(
        review_section(directory.path(), "Warning: names without DNS"),
        None
    );
    let directory = tempfile::tempdir().unwrap();
    export(directory.path(), &shop(8080, true), PolicyFormat::Cilium).unwrap();
    assert_eq!(
        review_section(directory.path(), "Warning: names without DNS"),
        None
    );
}

fn rendered(proposal: &Proposal, name: &str) -> String {
    render(proposal, PolicyFormat::Networkpolicy)[name].clone()
}

fn read(directory: &Path, name: &str) -> String {
    std::fs::read_to_string(directory.join(name)).unwrap()
}

/// The section of REVIEW.md between its title and the next one.
fn review_section(directory: &Path, title: &str) -> Option<String> {
    let review = read(directory, "REVIEW.md");
    let start = review.find(&format!("\n## {title}\n"))? + title.len() + 5;
    let end = review[start..]
        .find("\n## ")
        .map_or(review.len(), |end| start + end);
    Some(review[start..end].to_owned())
}

const HAND_EDITED: &str = "Hand-edited policies left as they are";

const HAND_EDITED_HEAD: &str = "\nflow-agent neither replaces nor removes these files, and `kustomization.yaml` keeps them. To take a proposal, move the `.proposed` file over the policy's (or remove the policy's file): the next export manages it again.\n\n";

const KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- shop.allow-deployment-api.yaml\n- shop.allow-deployment-web.yaml\n- shop.default-deny.yaml\n";

#[test]
fn a_hand_edited_policy_is_not_overwritten_and_its_proposal_goes_next_to_it() {
    let directory = tempfile::tempdir().unwrap();
    let directory = directory.path();
    export_shop(directory, &shop(8080, true));
    let edited = read(directory, WEB).replace("port: 8080", "port: 8081");
    std::fs::write(directory.join(WEB), &edited).unwrap();
    std::fs::write(directory.join("mine.yaml"), "kind: ConfigMap\n").unwrap();

    let summary = export_shop(directory, &shop(8080, true));
    assert_eq!(
        summary.hand_edited,
        [HandEdited {
            file: WEB.to_owned(),
            reason: HandEditReason::Edited,
            proposal: ProposalPlace::Written(WEB_PROPOSED.to_owned()),
        }]
    );
    assert_eq!(read(directory, WEB), edited);
    assert_eq!(
        read(directory, WEB_PROPOSED),
        rendered(&shop(8080, true), WEB)
    );
    assert_eq!(read(directory, "mine.yaml"), "kind: ConfigMap\n");
    // The edited file stays a resource; the proposal is none.
    assert_eq!(read(directory, "kustomization.yaml"), KUSTOMIZATION);
    assert_eq!(
        review_section(directory, HAND_EDITED).unwrap(),
        format!(
            "{HAND_EDITED_HEAD}- `{WEB}`: edited since flow-agent wrote it: its content no longer matches its `flow-agent.io/content-hash` annotation; proposal in `{WEB_PROPOSED}`\n"
        )
    );
    let manifest: Manifest = serde_json::from_str(&read(directory, MANIFEST)).unwrap();
    assert_eq!(
        manifest.files,
        [
            "kustomization.yaml",
            API,
            WEB,
            WEB_PROPOSED,
            "shop.default-deny.yaml"
        ]
    );

    // Again with the same traffic: not a byte changes.
    let before = contents(directory);
    let again = export_shop(directory, &shop(8080, true));
    assert_eq!(again.hand_edited, summary.hand_edited);
    assert_eq!(contents(directory), before);

    // The proposal taken: flow-agent's again.
    std::fs::rename(directory.join(WEB_PROPOSED), directory.join(WEB)).unwrap();
    let taken = export_shop(directory, &shop(8080, true));
    assert!(taken.hand_edited.is_empty(), "{:?}", taken.hand_edited);
    assert_eq!(read(directory, WEB), rendered(&shop(8080, true), WEB));
    assert_eq!(review_section(directory, HAND_EDITED), None);
    let manifest: Manifest = serde_json::from_str(&read(directory, MANIFEST)).unwrap();
    assert_eq!(
        manifest.files,
        ["kustomization.yaml", API, WEB, "shop.default-deny.yaml"]
    );

    // Edited again, then the traffic moves to what the person wrote: the
    // proposal file is not needed any more, and goes.
    std::fs::write(directory.join(WEB), &edited).unwrap();
    export_shop(directory, &shop(8080, true));
    assert!(directory.join(WEB_PROPOSED).exists());
    let moved = export_shop(directory, &shop(8081, true));
    assert_eq!(moved.removed, [WEB_PROPOSED]);
    assert!(!directory.join(WEB_PROPOSED).exists());
    assert_eq!(
        moved.hand_edited,
        [HandEdited {
            file: WEB.to_owned(),
            reason: HandEditReason::Edited,
            proposal: ProposalPlace::Same,
        }]
    );
}

#[test]
fn a_hand_written_policy_under_a_name_flow_agent_uses_is_not_overwritten() {
    let directory = tempfile::tempdir().unwrap();
    let directory = directory.path();
    let written = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-deployment-web\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - {}\n";
    std::fs::create_dir_all(directory).unwrap();
    std::fs::write(directory.join(WEB), written).unwrap();

    let summary = export_shop(directory, &shop(8080, true));
    assert_eq!(
        summary.hand_edited,
        [HandEdited {
            file: WEB.to_owned(),
            reason: HandEditReason::NoLabel,
            proposal: ProposalPlace::Written(WEB_PROPOSED.to_owned()),
        }]
    );
    assert_eq!(read(directory, WEB), written);
    assert_eq!(
        read(directory, WEB_PROPOSED),
        rendered(&shop(8080, true), WEB)
    );
    assert_eq!(
        review_section(directory, HAND_EDITED).unwrap(),
        format!(
            "{HAND_EDITED_HEAD}- `{WEB}`: no `app.kubernetes.io/managed-by: flow-agent` label: written by a person; proposal in `{WEB_PROPOSED}`\n"
        )
    );
    // Files flow-agent would write anyway are written.
    assert_eq!(read(directory, API), rendered(&shop(8080, true), API));
}

#[test]
fn an_untouched_generated_policy_is_updated_as_the_traffic_changes() {
    let directory = tempfile::tempdir().unwrap();
    let directory = directory.path();
    export_shop(directory, &shop(8080, true));
    let summary = export_shop(directory, &shop(9090, true));
    assert!(summary.hand_edited.is_empty(), "{:?}", summary.hand_edited);
    assert_eq!(read(directory, WEB), rendered(&shop(9090, true), WEB));
    assert!(read(directory, WEB).contains("port: 9090\n"));
    assert!(!directory.join(WEB_PROPOSED).exists());
    assert_eq!(
        summary.added,
        [
            "shop/Deployment/api egress to shop pods app=web TCP/9090",
            "shop/Deployment/web ingress from shop pods app=api TCP/9090",
        ]
    );
    assert_eq!(review_section(directory, HAND_EDITED), None);
}

#[test]
fn a_removed_workloads_untouched_policy_goes_and_a_hand_edited_one_stays() {
    let untouched = tempfile::tempdir().unwrap();
    let untouched = untouched.path();
    export_shop(untouched, &shop(8080, true));
    let summary = export_shop(untouched, &shop(8080, false));
    assert_eq!(summary.removed, [API]);
    assert!(summary.hand_edited.is_empty(), "{:?}", summary.hand_edited);
    assert!(!untouched.join(API).exists());
    assert_eq!(
        read(untouched, "kustomization.yaml"),
        KUSTOMIZATION.replace("- shop.allow-deployment-api.yaml\n", "")
    );

    let edited = tempfile::tempdir().unwrap();
    let edited = edited.path();
    export_shop(edited, &shop(8080, true));
    let text = format!("# keep: the batch job needs it\n{}", read(edited, API));
    std::fs::write(edited.join(API), &text).unwrap();
    let summary = export_shop(edited, &shop(8080, false));
    assert!(summary.removed.is_empty(), "{:?}", summary.removed);
    assert_eq!(
        summary.hand_edited,
        [HandEdited {
            file: API.to_owned(),
            reason: HandEditReason::Edited,
            proposal: ProposalPlace::NoneAnyMore,
        }]
    );
    assert_eq!(read(edited, API), text);
    // Still applied: a GitOps tool that prunes would delete it otherwise.
    assert_eq!(read(edited, "kustomization.yaml"), KUSTOMIZATION);
    assert_eq!(
        review_section(edited, HAND_EDITED).unwrap(),
        format!(
            "{HAND_EDITED_HEAD}- `{API}`: edited since flow-agent wrote it: its content no longer matches its `flow-agent.io/content-hash` annotation; flow-agent proposes no such policy any more: remove the file if it is not wanted\n"
        )
    );
    // And the next exports keep it too, the same way, byte for byte.
    let again = export_shop(edited, &shop(8080, false));
    assert_eq!(again.hand_edited, summary.hand_edited);
    let before = contents(edited);
    assert_eq!(export_shop(edited, &shop(8080, false)), again);
    assert_eq!(contents(edited), before);
}

#[test]
fn a_reexport_without_traffic_changes_is_byte_identical() {
    let directory = tempfile::tempdir().unwrap();
    let directory = directory.path();
    let first = export_shop(directory, &shop(8080, true));
    let before = contents(directory);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        [
            MANIFEST,
            "REVIEW.md",
            "kustomization.yaml",
            API,
            WEB,
            "shop.default-deny.yaml"
        ]
    );
    let second = export_shop(directory, &shop(8080, true));
    assert!(!first.had_previous && second.had_previous);
    let after = contents(directory);
    for (name, text) in &before {
        // REVIEW.md says this is not the first export; nothing else differs.
        if name != "REVIEW.md" {
            assert_eq!(&after[name], text, "{name}");
        }
    }
    let third = export_shop(directory, &shop(8080, true));
    assert_eq!(third, second);
    assert_eq!(contents(directory), after);
}

#[test]
fn a_policy_that_no_longer_parses_counts_as_hand_edited_and_is_kept() {
    let directory = tempfile::tempdir().unwrap();
    let directory = directory.path();
    export_shop(directory, &shop(8080, true));
    let broken = read(directory, WEB).replace("  ingress:\n", "  ingress:\n\t- {}\n");
    std::fs::write(directory.join(WEB), &broken).unwrap();

    let summary = export_shop(directory, &shop(8080, true));
    assert_eq!(read(directory, WEB), broken);
    assert_eq!(
        read(directory, WEB_PROPOSED),
        rendered(&shop(8080, true), WEB)
    );
    let [kept] = &summary.hand_edited[..] else {
        panic!("{:?}", summary.hand_edited);
    };
    assert_eq!(
        (&kept.file, &kept.proposal),
        (
            &WEB.to_owned(),
            &ProposalPlace::Written(WEB_PROPOSED.to_owned())
        )
    );
    let HandEditReason::NotYaml(error) = &kept.reason else {
        panic!("{:?}", kept.reason);
    };
    assert_eq!(
        error,
        "found character that cannot start any token at line 12 column 1, while scanning for the next token"
    );
    assert!(
        review_section(directory, HAND_EDITED).unwrap().contains(&format!(
            "- `{WEB}`: not one valid YAML document (found character that cannot start any token at line 12 column 1, while scanning for the next token); proposal in `{WEB_PROPOSED}`\n"
        ))
    );
}

#[test]
fn a_hand_edit_that_says_what_flow_agent_proposes_gets_no_proposal_file() {
    let directory = tempfile::tempdir().unwrap();
    let directory = directory.path();
    export_shop(directory, &shop(8080, true));
    // A comment, and the port a person opened ahead of the traffic.
    let edited = format!(
        "# opened for the new release\n{}",
        read(directory, WEB).replace("port: 8080", "port: 9090")
    );
    std::fs::write(directory.join(WEB), &edited).unwrap();

    let summary = export_shop(directory, &shop(9090, true));
    assert_eq!(
        summary.hand_edited,
        [HandEdited {
            file: WEB.to_owned(),
            reason: HandEditReason::Edited,
            proposal: ProposalPlace::Same,
        }]
    );
    assert_eq!(read(directory, WEB), edited);
    assert!(!directory.join(WEB_PROPOSED).exists());
    assert_eq!(
        review_section(directory, HAND_EDITED).unwrap(),
        format!(
            "{HAND_EDITED_HEAD}- `{WEB}`: edited since flow-agent wrote it: its content no longer matches its `flow-agent.io/content-hash` annotation; it already says what flow-agent proposes\n"
        )
    );
}

#[test]
fn a_policy_written_before_the_content_hash_gains_it_when_unchanged() {
    let directory = tempfile::tempdir().unwrap();
    let directory = directory.path();
    export_shop(directory, &shop(8080, true));
    let current = rendered(&shop(8080, true), WEB);
    // As flow-agent wrote it before the annotation: the two lines less.
    let start = current.find("  annotations:\n").unwrap();
    let end = current.find("  labels:\n").unwrap();
    let old = format!("{}{}", &current[..start], &current[end..]);
    std::fs::write(directory.join(WEB), &old).unwrap();
    let summary = export_shop(directory, &shop(8080, true));
    assert!(summary.hand_edited.is_empty(), "{:?}", summary.hand_edited);
    assert_eq!(read(directory, WEB), current);

    // Changed since, it is a person's: the annotation cannot tell.
    let old = old.replace("port: 8080", "port: 8081");
    std::fs::write(directory.join(WEB), &old).unwrap();
    let summary = export_shop(directory, &shop(8080, true));
    assert_eq!(
        summary.hand_edited,
        [HandEdited {
            file: WEB.to_owned(),
            reason: HandEditReason::NoContentHash,
            proposal: ProposalPlace::Written(WEB_PROPOSED.to_owned()),
        }]
    );
    assert_eq!(read(directory, WEB), old);
}

#[test]
fn review_names_each_outside_address_and_marks_those_whose_names_moved() {
    let named = |address: &str, names: &[&str], changed| NamedAddress {
        address: address.parse().unwrap(),
        names: names.iter().map(|name| (*name).to_owned()).collect(),
        changed,
    };
    let mut proposal = shop(8080, true);
    proposal.named_addresses = vec![
        named("20.42.65.92", &["myvault.vault.azure.net"], true),
        named("20.42.65.93", &["myvault.vault.azure.net"], true),
        named(
            "52.239.1.4",
            &[
                "acct.blob.core.windows.net",
                "blob.eastus.store.core.windows.net",
            ],
            false,
        ),
    ];
    let lines = "- `20.42.65.92`: myvault.vault.azure.net (*changed*)\n- `20.42.65.93`: myvault.vault.azure.net (*changed*)\n- `52.239.1.4`: acct.blob.core.windows.net, blob.eastus.store.core.windows.net\n";
    for (format, head) in [
        (
            PolicyFormat::Networkpolicy,
            "NetworkPolicy cannot name hosts: each address is allowed as itself (/32 or /128), here with the names the workloads resolved to it. Addresses marked *changed* had a name that also resolved to another address during the window: their rules break when the name moves. `--format cilium` (Azure CNI powered by Cilium) allows them by name (`toFQDNs`).",
        ),
        (
            PolicyFormat::Cilium,
            "Allowed by name (`toFQDNs`), not by address; addresses marked *changed* show why.",
        ),
    ] {
        let directory = tempfile::tempdir().unwrap();
        export(directory.path(), &proposal, format).unwrap();
        assert_eq!(
            review_section(directory.path(), "Outside addresses by name").unwrap(),
            format!("\n{head}\n\n{lines}")
        );
    }
    // Without names, no section.
    let directory = tempfile::tempdir().unwrap();
    export_shop(directory.path(), &shop(8080, true));
    assert_eq!(
        review_section(directory.path(), "Outside addresses by name"),
        None
    );
}
