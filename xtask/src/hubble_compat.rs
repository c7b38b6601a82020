//! `cargo xtask hubble-compat`: proves that flow-agent's Hubble schema
//! (`proto/hubble/`) is a wire-compatible subset of Cilium's published one.
//!
//! flow-agent declares only what it uses, so upstream may have more messages,
//! fields, enum values and methods. Everything flow-agent declares must exist
//! upstream unchanged: a Hubble client (the CLI, Hubble UI, hubble-relay)
//! decodes flow-agent's bytes with upstream's schema, and a field number,
//! type or oneof that differs would be misread without any error. Upstream's
//! files are not part of this repository; the check runs against a copy.

use std::{collections::HashMap, ffi::OsString, fmt, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use prost::Message as _;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto, field_descriptor_proto::Type,
};

/// Hubble's packages; every other file in a set (google/protobuf) is an import.
const PACKAGES: [&str; 4] = ["flow", "observer", "peer", "relay"];

/// The files given to protoc; observer.proto imports flow.proto and relay.proto.
const ENTRY_POINTS: [&str; 2] = ["observer/observer.proto", "peer/peer.proto"];

/// Upstream's `api/v1` layout, as far as the check needs it.
const LAYOUT: [&str; 4] = [
    "flow/flow.proto",
    "observer/observer.proto",
    "peer/peer.proto",
    "relay/relay.proto",
];

/// Compiles `proto/hubble` and the copy of upstream at `upstream`, prints one
/// line per definition of ours, and fails if any of it differs from upstream.
pub(crate) fn run(upstream: &Path) -> Result<()> {
    for file in LAYOUT {
        let path = upstream.join(file);
        if !path.is_file() {
            bail!(
                "{} is missing: --upstream must have Cilium's api/v1 layout ({})",
                path.display(),
                LAYOUT.join(", ")
            );
        }
    }
    let root = crate::workspace_root();
    let scratch = root.join("target").join("hubble-compat");
    fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let ours = compile(&root.join("proto").join("hubble"), &scratch.join("ours.pb"))?;
    let theirs = compile(upstream, &scratch.join("upstream.pb"))?;
    let findings = compare(&ours, &theirs);
    for finding in &findings {
        println!("{finding}");
    }
    let mismatches = findings
        .iter()
        .filter(|finding| matches!(finding, Finding::Mismatch { .. }))
        .count();
    if mismatches > 0 {
        bail!(
            "{mismatches} mismatches between proto/hubble and {}",
            upstream.display()
        );
    }
    println!(
        "proto/hubble is a wire-compatible subset of {}",
        upstream.display()
    );
    Ok(())
}

/// Compiles the Hubble files under `root` with the vendored protoc into a
/// descriptor set at `out`, with the google/protobuf files they import.
fn compile(root: &Path, out: &Path) -> Result<FileDescriptorSet> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context("vendored protoc")?;
    let include = protoc_bin_vendored::include_path().context("vendored protoc's includes")?;
    let mut descriptor_set_out = OsString::from("--descriptor_set_out=");
    descriptor_set_out.push(out);
    let status = Command::new(&protoc)
        .arg("--include_imports")
        .arg(descriptor_set_out)
        .arg("-I")
        .arg(root)
        .arg("-I")
        .arg(include)
        // Paths under an -I directory, so that protoc names the files as they
        // import each other (flow/flow.proto) whatever the current directory.
        .args(ENTRY_POINTS.map(|file| root.join(file)))
        .status()
        .with_context(|| format!("cannot run {}", protoc.display()))?;
    if !status.success() {
        bail!("protoc failed on {} with {status}", root.display());
    }
    let bytes = fs::read(out).with_context(|| format!("cannot read {}", out.display()))?;
    FileDescriptorSet::decode(bytes.as_slice())
        .with_context(|| format!("{} is no FileDescriptorSet", out.display()))
}

/// What the comparison found about one definition of ours, or one of its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    /// A definition of ours that upstream has, unchanged; it declares `ours`
    /// of upstream's `upstream` parts (fields, values or methods).
    Match {
        name: String,
        ours: usize,
        upstream: usize,
        parts: &'static str,
    },
    /// `name` (a definition, field, enum value or method) differs from upstream.
    Mismatch { name: String, problem: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Match {
                name,
                ours,
                upstream,
                parts,
            } => write!(f, "ok {name} ({ours} of {upstream} {parts})"),
            Self::Mismatch { name, problem } => write!(f, "MISMATCH {name}: {problem}"),
        }
    }
}

/// Checks every message, enum and service of `ours` in Hubble's packages
/// against `upstream`, in the order `ours` declares them. Upstream may have
/// more; the [`Finding::Match`] lines say how much more.
pub(crate) fn compare(ours: &FileDescriptorSet, upstream: &FileDescriptorSet) -> Vec<Finding> {
    let index: HashMap<String, Definition<'_>> = definitions(upstream).into_iter().collect();
    definitions(ours)
        .into_iter()
        .flat_map(|(name, definition)| check(&name, definition, index.get(&name)))
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Definition<'a> {
    Message(&'a DescriptorProto),
    Enum(&'a EnumDescriptorProto),
    Service(&'a ServiceDescriptorProto),
}

impl Definition<'_> {
    fn kind(self) -> &'static str {
        match self {
            Self::Message(_) => "message",
            Self::Enum(_) => "enum",
            Self::Service(_) => "service",
        }
    }
}

/// Every definition in Hubble's packages, nested ones included, by
/// fully-qualified name (`flow.FlowFilter.Experimental`).
fn definitions(set: &FileDescriptorSet) -> Vec<(String, Definition<'_>)> {
    let mut found = Vec::new();
    for file in &set.file {
        let package = file.package();
        if !PACKAGES.contains(&package) {
            continue;
        }
        for message in &file.message_type {
            push_message(package, message, &mut found);
        }
        for enumeration in &file.enum_type {
            found.push((
                qualify(package, enumeration.name()),
                Definition::Enum(enumeration),
            ));
        }
        for service in &file.service {
            found.push((
                qualify(package, service.name()),
                Definition::Service(service),
            ));
        }
    }
    found
}

fn push_message<'a>(
    scope: &str,
    message: &'a DescriptorProto,
    found: &mut Vec<(String, Definition<'a>)>,
) {
    let name = qualify(scope, message.name());
    found.push((name.clone(), Definition::Message(message)));
    for nested in &message.nested_type {
        push_message(&name, nested, found);
    }
    for enumeration in &message.enum_type {
        found.push((
            qualify(&name, enumeration.name()),
            Definition::Enum(enumeration),
        ));
    }
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

/// One definition of ours against upstream's of the same name: a single
/// [`Finding::Match`], or every mismatch.
fn check(name: &str, ours: Definition<'_>, upstream: Option<&Definition<'_>>) -> Vec<Finding> {
    let (mismatches, declared, available, parts) = match (ours, upstream) {
        (Definition::Message(ours), Some(Definition::Message(theirs))) => (
            message_mismatches(name, ours, theirs),
            ours.field.len(),
            theirs.field.len(),
            "fields",
        ),
        (Definition::Enum(ours), Some(Definition::Enum(theirs))) => (
            enum_mismatches(name, ours, theirs),
            ours.value.len(),
            theirs.value.len(),
            "values",
        ),
        (Definition::Service(ours), Some(Definition::Service(theirs))) => (
            service_mismatches(name, ours, theirs),
            ours.method.len(),
            theirs.method.len(),
            "methods",
        ),
        (ours, _) => {
            return vec![mismatch(name, format!("no such {} upstream", ours.kind()))];
        }
    };
    if mismatches.is_empty() {
        vec![Finding::Match {
            name: name.to_owned(),
            ours: declared,
            upstream: available,
            parts,
        }]
    } else {
        mismatches
    }
}

fn mismatch(name: &str, problem: String) -> Finding {
    Finding::Mismatch {
        name: name.to_owned(),
        problem,
    }
}

/// Adds "`what` X upstream, Y ours" to `problems` when X and Y differ.
fn differ<T: PartialEq + fmt::Display>(
    problems: &mut Vec<String>,
    what: &str,
    upstream: T,
    ours: T,
) {
    if upstream != ours {
        problems.push(format!("{what} {upstream} upstream, {ours} ours"));
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

/// Fields are matched by name, as a name says what a field means; a field
/// with upstream's name but another number is reported as such, not missing.
fn message_mismatches(
    name: &str,
    ours: &DescriptorProto,
    upstream: &DescriptorProto,
) -> Vec<Finding> {
    let mut mismatches = Vec::new();
    for field in &ours.field {
        let path = format!("{name}.{}", field.name());
        let problems = match upstream
            .field
            .iter()
            .find(|theirs| theirs.name() == field.name())
        {
            Some(theirs) => field_problems((ours, field), (upstream, theirs)),
            None => {
                let other = upstream
                    .field
                    .iter()
                    .find(|theirs| theirs.number() == field.number());
                vec![missing(
                    "field",
                    field.number(),
                    other.map(FieldDescriptorProto::name),
                )]
            }
        };
        mismatches.extend(problems.into_iter().map(|problem| mismatch(&path, problem)));
    }
    for range in &ours.reserved_range {
        // Message reserved ranges exclude their end.
        let reserved = range.start()..range.end();
        for theirs in upstream
            .field
            .iter()
            .filter(|theirs| reserved.contains(&theirs.number()))
        {
            let problem = format!(
                "number {} reserved ours, field {} upstream",
                theirs.number(),
                theirs.name()
            );
            mismatches.push(mismatch(name, problem));
        }
    }
    mismatches
}

/// "no such field upstream", and what upstream uses the number for instead.
fn missing(part: &str, number: i32, upstream_owner: Option<&str>) -> String {
    match upstream_owner {
        Some(other) => format!("no such {part} upstream; number {number} is {other} there"),
        None => format!("no such {part} upstream; number {number} is unused there"),
    }
}

/// How one field of ours, with its message, differs from upstream's of the
/// same name.
fn field_problems(
    (ours, field): (&DescriptorProto, &FieldDescriptorProto),
    (upstream, theirs): (&DescriptorProto, &FieldDescriptorProto),
) -> Vec<String> {
    let mut problems = Vec::new();
    differ(&mut problems, "number", theirs.number(), field.number());
    differ(&mut problems, "type", field_type(theirs), field_type(field));
    differ(&mut problems, "label", label(theirs), label(field));
    differ(
        &mut problems,
        "oneof",
        oneof(upstream, theirs),
        oneof(ours, field),
    );
    differ(
        &mut problems,
        "proto3 optional",
        yes_no(theirs.proto3_optional()),
        yes_no(field.proto3_optional()),
    );
    // protojson (hubble observe -o json) names fields by json_name.
    differ(
        &mut problems,
        "json name",
        theirs.json_name(),
        field.json_name(),
    );
    problems
}

/// A field's type as a person reads it: `string`, `message flow.Endpoint`.
fn field_type(field: &FieldDescriptorProto) -> String {
    let named = field.type_name().trim_start_matches('.');
    match field.r#type() {
        Type::Message => format!("message {named}"),
        Type::Enum => format!("enum {named}"),
        Type::Group => format!("group {named}"),
        scalar => scalar
            .as_str_name()
            .trim_start_matches("TYPE_")
            .to_lowercase(),
    }
}

fn label(field: &FieldDescriptorProto) -> String {
    field
        .label()
        .as_str_name()
        .trim_start_matches("LABEL_")
        .to_lowercase()
}

/// The oneof `field` belongs to in `message`, by name: the index alone says
/// nothing, as each side numbers its own oneofs.
fn oneof<'a>(message: &'a DescriptorProto, field: &FieldDescriptorProto) -> &'a str {
    field
        .oneof_index
        .and_then(|index| usize::try_from(index).ok())
        .and_then(|index| message.oneof_decl.get(index))
        .map_or("none", |oneof| oneof.name())
}

fn enum_mismatches(
    name: &str,
    ours: &EnumDescriptorProto,
    upstream: &EnumDescriptorProto,
) -> Vec<Finding> {
    let mut mismatches = Vec::new();
    for value in &ours.value {
        let path = format!("{name}.{}", value.name());
        let mut problems = Vec::new();
        match upstream
            .value
            .iter()
            .find(|theirs| theirs.name() == value.name())
        {
            Some(theirs) => differ(&mut problems, "number", theirs.number(), value.number()),
            None => {
                let other = upstream
                    .value
                    .iter()
                    .find(|theirs| theirs.number() == value.number());
                problems.push(missing(
                    "value",
                    value.number(),
                    other.map(|other| other.name()),
                ));
            }
        }
        mismatches.extend(problems.into_iter().map(|problem| mismatch(&path, problem)));
    }
    for range in &ours.reserved_range {
        // Enum reserved ranges include their end.
        let reserved = range.start()..=range.end();
        for theirs in upstream
            .value
            .iter()
            .filter(|theirs| reserved.contains(&theirs.number()))
        {
            let problem = format!(
                "number {} reserved ours, value {} upstream",
                theirs.number(),
                theirs.name()
            );
            mismatches.push(mismatch(name, problem));
        }
    }
    mismatches
}

fn service_mismatches(
    name: &str,
    ours: &ServiceDescriptorProto,
    upstream: &ServiceDescriptorProto,
) -> Vec<Finding> {
    let mut mismatches = Vec::new();
    for method in &ours.method {
        let path = format!("{name}.{}", method.name());
        let Some(theirs) = upstream
            .method
            .iter()
            .find(|theirs| theirs.name() == method.name())
        else {
            mismatches.push(mismatch(&path, "no such method upstream".to_owned()));
            continue;
        };
        let mut problems = Vec::new();
        let message = |type_name: &str| type_name.trim_start_matches('.').to_owned();
        differ(
            &mut problems,
            "input",
            message(theirs.input_type()),
            message(method.input_type()),
        );
        differ(
            &mut problems,
            "output",
            message(theirs.output_type()),
            message(method.output_type()),
        );
        differ(
            &mut problems,
            "client streaming",
            yes_no(theirs.client_streaming()),
            yes_no(method.client_streaming()),
        );
        differ(
            &mut problems,
            "server streaming",
            yes_no(theirs.server_streaming()),
            yes_no(method.server_streaming()),
        );
        mismatches.extend(problems.into_iter().map(|problem| mismatch(&path, problem)));
    }
    mismatches
}

#[cfg(test)]
mod tests {
    use prost_types::{
        EnumValueDescriptorProto, FileDescriptorProto, MethodDescriptorProto, OneofDescriptorProto,
        descriptor_proto::ReservedRange, field_descriptor_proto::Label,
    };

    use super::*;

    fn field(
        name: &str,
        number: i32,
        r#type: Type,
        type_name: Option<&str>,
    ) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(Label::Optional.into()),
            r#type: Some(r#type.into()),
            type_name: type_name.map(Into::into),
            ..Default::default()
        }
    }

    fn repeated(field: FieldDescriptorProto) -> FieldDescriptorProto {
        FieldDescriptorProto {
            label: Some(Label::Repeated.into()),
            ..field
        }
    }

    fn in_oneof(field: FieldDescriptorProto, index: i32) -> FieldDescriptorProto {
        FieldDescriptorProto {
            oneof_index: Some(index),
            ..field
        }
    }

    fn message(name: &str, field: Vec<FieldDescriptorProto>) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.into()),
            field,
            ..Default::default()
        }
    }

    fn enumeration(name: &str, values: &[(&str, i32)]) -> EnumDescriptorProto {
        EnumDescriptorProto {
            name: Some(name.into()),
            value: values
                .iter()
                .map(|&(name, number)| EnumValueDescriptorProto {
                    name: Some(name.into()),
                    number: Some(number),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn method(
        name: &str,
        input: &str,
        output: &str,
        server_streaming: bool,
    ) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(input.into()),
            output_type: Some(output.into()),
            client_streaming: Some(false),
            server_streaming: Some(server_streaming),
            ..Default::default()
        }
    }

    fn file(
        package: &str,
        message_type: Vec<DescriptorProto>,
        enum_type: Vec<EnumDescriptorProto>,
        methods: Vec<MethodDescriptorProto>,
    ) -> FileDescriptorProto {
        let service = if methods.is_empty() {
            Vec::new()
        } else {
            vec![ServiceDescriptorProto {
                name: Some("Observer".into()),
                method: methods,
                ..Default::default()
            }]
        };
        FileDescriptorProto {
            name: Some(format!("{package}.proto")),
            package: Some(package.into()),
            message_type,
            enum_type,
            service,
            ..Default::default()
        }
    }

    fn layer4(fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
        DescriptorProto {
            oneof_decl: vec![OneofDescriptorProto {
                name: Some("protocol".into()),
                ..Default::default()
            }],
            ..message("Layer4", fields)
        }
    }

    /// A miniature of upstream: more fields, values and methods than ours.
    fn upstream() -> FileDescriptorSet {
        let flow = message(
            "Flow",
            vec![
                field("time", 1, Type::Message, Some(".google.protobuf.Timestamp")),
                field("verdict", 2, Type::Enum, Some(".flow.Verdict")),
                field("drop_reason", 3, Type::Uint32, None),
                repeated(field("source_names", 13, Type::String, None)),
                field("uuid", 34, Type::String, None),
            ],
        );
        let l4 = layer4(vec![
            in_oneof(field("TCP", 1, Type::Message, Some(".flow.TCP")), 0),
            in_oneof(field("UDP", 2, Type::Message, Some(".flow.UDP")), 0),
        ]);
        let request = DescriptorProto {
            reserved_range: vec![ReservedRange {
                start: Some(2),
                end: Some(3),
            }],
            ..message(
                "GetFlowsRequest",
                vec![field("number", 1, Type::Uint64, None)],
            )
        };
        FileDescriptorSet {
            file: vec![
                file(
                    "flow",
                    vec![flow, l4, message("TCP", vec![]), message("UDP", vec![])],
                    vec![enumeration(
                        "Verdict",
                        &[("VERDICT_UNKNOWN", 0), ("FORWARDED", 1), ("DROPPED", 2)],
                    )],
                    vec![],
                ),
                file(
                    "observer",
                    vec![
                        request,
                        message("GetFlowsResponse", vec![]),
                        message("ServerStatusRequest", vec![]),
                    ],
                    vec![],
                    vec![
                        method(
                            "GetFlows",
                            ".observer.GetFlowsRequest",
                            ".observer.GetFlowsResponse",
                            true,
                        ),
                        method(
                            "ServerStatus",
                            ".observer.ServerStatusRequest",
                            ".observer.ServerStatusResponse",
                            false,
                        ),
                    ],
                ),
            ],
        }
    }

    /// flow-agent's side: a subset of [`upstream`], with a well-known type
    /// upstream's miniature lacks, which the check must leave alone.
    fn ours() -> FileDescriptorSet {
        let flow = message(
            "Flow",
            vec![
                field("time", 1, Type::Message, Some(".google.protobuf.Timestamp")),
                field("uuid", 34, Type::String, None),
                field("verdict", 2, Type::Enum, Some(".flow.Verdict")),
                repeated(field("source_names", 13, Type::String, None)),
            ],
        );
        let l4 = layer4(vec![in_oneof(
            field("TCP", 1, Type::Message, Some(".flow.TCP")),
            0,
        )]);
        let request = DescriptorProto {
            reserved_range: vec![ReservedRange {
                start: Some(2),
                end: Some(3),
            }],
            ..message(
                "GetFlowsRequest",
                vec![field("number", 1, Type::Uint64, None)],
            )
        };
        FileDescriptorSet {
            file: vec![
                file(
                    "google.protobuf",
                    vec![message("Timestamp", vec![])],
                    vec![],
                    vec![],
                ),
                file(
                    "flow",
                    vec![flow, l4, message("TCP", vec![])],
                    vec![enumeration(
                        "Verdict",
                        &[("VERDICT_UNKNOWN", 0), ("FORWARDED", 1)],
                    )],
                    vec![],
                ),
                file(
                    "observer",
                    vec![request, message("GetFlowsResponse", vec![])],
                    vec![],
                    vec![method(
                        "GetFlows",
                        ".observer.GetFlowsRequest",
                        ".observer.GetFlowsResponse",
                        true,
                    )],
                ),
            ],
        }
    }

    fn field_mut<'a>(
        set: &'a mut FileDescriptorSet,
        message: &str,
        field: &str,
    ) -> &'a mut FieldDescriptorProto {
        set.file
            .iter_mut()
            .flat_map(|file| file.message_type.iter_mut())
            .filter(|candidate| candidate.name() == message)
            .flat_map(|message| message.field.iter_mut())
            .find(|candidate| candidate.name() == field)
            .expect("the test names a field of ours()")
    }

    fn observer_mut(set: &mut FileDescriptorSet) -> &mut ServiceDescriptorProto {
        set.file
            .iter_mut()
            .flat_map(|file| file.service.iter_mut())
            .next()
            .expect("ours() declares Observer")
    }

    fn mismatches(ours: &FileDescriptorSet) -> Vec<String> {
        compare(ours, &upstream())
            .iter()
            .filter(|finding| matches!(finding, Finding::Mismatch { .. }))
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn matching_subset_passes_and_counts_what_it_leaves_out() {
        let report: Vec<String> = compare(&ours(), &upstream())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            report,
            [
                "ok flow.Flow (4 of 5 fields)",
                "ok flow.Layer4 (1 of 2 fields)",
                "ok flow.TCP (0 of 0 fields)",
                "ok flow.Verdict (2 of 3 values)",
                "ok observer.GetFlowsRequest (1 of 1 fields)",
                "ok observer.GetFlowsResponse (0 of 0 fields)",
                "ok observer.Observer (1 of 2 methods)",
            ]
        );
    }

    #[test]
    fn field_with_another_number_fails() {
        let mut ours = ours();
        field_mut(&mut ours, "Flow", "uuid").number = Some(33);
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Flow.uuid: number 34 upstream, 33 ours"]
        );
    }

    #[test]
    fn field_with_another_type_fails() {
        let mut ours = ours();
        field_mut(&mut ours, "Flow", "uuid").r#type = Some(Type::Bytes.into());
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Flow.uuid: type string upstream, bytes ours"]
        );
    }

    #[test]
    fn field_referring_to_another_message_fails() {
        let mut ours = ours();
        field_mut(&mut ours, "Layer4", "TCP").type_name = Some(".flow.UDP".into());
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Layer4.TCP: type message flow.TCP upstream, message flow.UDP ours"]
        );
    }

    #[test]
    fn field_with_another_label_fails() {
        let mut ours = ours();
        field_mut(&mut ours, "Flow", "source_names").label = Some(Label::Optional.into());
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Flow.source_names: label repeated upstream, optional ours"]
        );
    }

    #[test]
    fn field_missing_upstream_fails_and_names_who_has_its_number() {
        let mut ours = ours();
        field_mut(&mut ours, "Flow", "uuid").name = Some("id".into());
        field_mut(&mut ours, "Flow", "time").name = Some("when".into());
        field_mut(&mut ours, "Flow", "when").number = Some(99);
        assert_eq!(
            mismatches(&ours),
            [
                "MISMATCH flow.Flow.when: no such field upstream; number 99 is unused there",
                "MISMATCH flow.Flow.id: no such field upstream; number 34 is uuid there",
            ]
        );
    }

    #[test]
    fn field_moved_out_of_its_oneof_fails() {
        let mut ours = ours();
        field_mut(&mut ours, "Layer4", "TCP").oneof_index = None;
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Layer4.TCP: oneof protocol upstream, none ours"]
        );
    }

    #[test]
    fn enum_value_missing_upstream_fails() {
        let mut ours = ours();
        ours.file[1].enum_type[0] = enumeration(
            "Verdict",
            &[("VERDICT_UNKNOWN", 0), ("FORWARDED", 1), ("AUDIT", 4)],
        );
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Verdict.AUDIT: no such value upstream; number 4 is unused there"]
        );
    }

    #[test]
    fn enum_value_with_another_number_fails() {
        let mut ours = ours();
        ours.file[1].enum_type[0] =
            enumeration("Verdict", &[("VERDICT_UNKNOWN", 0), ("FORWARDED", 2)]);
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Verdict.FORWARDED: number 1 upstream, 2 ours"]
        );
    }

    #[test]
    fn message_missing_upstream_fails() {
        let mut ours = ours();
        ours.file[1].message_type.push(message("Emitter", vec![]));
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Emitter: no such message upstream"]
        );
    }

    #[test]
    fn reserved_number_upstream_uses_fails() {
        let mut ours = ours();
        ours.file[1].message_type[0]
            .reserved_range
            .push(ReservedRange {
                start: Some(3),
                end: Some(5),
            });
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH flow.Flow: number 3 reserved ours, field drop_reason upstream"]
        );
    }

    #[test]
    fn method_missing_upstream_fails() {
        let mut ours = ours();
        observer_mut(&mut ours).method.push(method(
            "GetNodes",
            ".observer.GetNodesRequest",
            ".observer.GetNodesResponse",
            false,
        ));
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH observer.Observer.GetNodes: no such method upstream"]
        );
    }

    #[test]
    fn method_with_another_streaming_flag_fails() {
        let mut ours = ours();
        observer_mut(&mut ours).method[0].server_streaming = Some(false);
        assert_eq!(
            mismatches(&ours),
            ["MISMATCH observer.Observer.GetFlows: server streaming yes upstream, no ours"]
        );
    }

    #[test]
    fn method_with_another_input_fails() {
        let mut ours = ours();
        observer_mut(&mut ours).method[0].input_type = Some(".observer.GetFlowsResponse".into());
        assert_eq!(
            mismatches(&ours),
            [
                "MISMATCH observer.Observer.GetFlows: input observer.GetFlowsRequest upstream, observer.GetFlowsResponse ours"
            ]
        );
    }
}
