//! Who may see which flows. Flows reveal a tenant's topology, so a caller is
//! identified (client certificate name or bearer token) and mapped to a tenant
//! or to cluster-admin by an access policy, or by the cluster's RBAC
//! ([`super::rbac`]); unknown callers are refused.
//!
//! Policy file (YAML):
//!
//! ```yaml
//! clients:                 # mTLS client certificates, by CN or DNS name
//! - name: team-acme
//!   tenant: acme
//! - name: platform
//!   admin: true
//! tokens:                  # `authorization: Bearer <token>`, stored as SHA-256
//! - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!   tenant: globex
//! ```

use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tonic::{Request, Status};

use super::{
    filter::{NamespaceGrant, Scope},
    rbac::{KubernetesAccess, User, Verb, Who},
};

/// Errors in an access policy file.
#[derive(Debug, Error)]
pub enum AccessError {
    /// The file cannot be read.
    #[error("cannot read access policy {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("invalid access policy {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    clients: Vec<ClientEntry>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    tenant: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    tenant: Option<String>,
    #[serde(default)]
    admin: bool,
}

fn scope_of(tenant: Option<String>, admin: bool, what: &str) -> Result<Scope, String> {
    match (tenant, admin) {
        (Some(tenant), false) if !tenant.is_empty() => Ok(Scope::Tenant(tenant)),
        (None, true) => Ok(Scope::Admin),
        _ => Err(format!(
            "{what}: give either `tenant: NAME` or `admin: true`"
        )),
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// How callers are identified and scoped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    clients: HashMap<String, Scope>,
    tokens: HashMap<[u8; 32], Scope>,
}

impl AccessPolicy {
    /// Parses a policy; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, AccessError> {
        let invalid = |message: String| AccessError::Invalid {
            path: path.to_owned(),
            message,
        };
        let PolicyFile { clients, tokens } =
            yaml_serde::from_str(text).map_err(|error| invalid(error.to_string()))?;
        let mut policy = Self::default();
        for (
            index,
            ClientEntry {
                name,
                tenant,
                admin,
            },
        ) in clients.into_iter().enumerate()
        {
            let scope = scope_of(tenant, admin, &format!("clients[{index}]")).map_err(invalid)?;
            if name.is_empty() {
                return Err(invalid(format!("clients[{index}].name: empty")));
            }
            // A name given twice would silently take the later scope (a
            // tenant turned admin by a copy-paste).
            if policy.clients.contains_key(&name) {
                return Err(invalid(format!(
                    "clients[{index}].name: {name:?} is already listed"
                )));
            }
            policy.clients.insert(name, scope);
        }
        for (
            index,
            TokenEntry {
                sha256,
                tenant,
                admin,
            },
        ) in tokens.into_iter().enumerate()
        {
            let scope = scope_of(tenant, admin, &format!("tokens[{index}]")).map_err(invalid)?;
            let digest = parse_sha256(&sha256).ok_or_else(|| {
                invalid(format!(
                    "tokens[{index}].sha256: {sha256:?} is not 64 hex digits"
                ))
            })?;
            if policy.tokens.contains_key(&digest) {
                return Err(invalid(format!(
                    "tokens[{index}].sha256: this token is already listed"
                )));
            }
            policy.tokens.insert(digest, scope);
        }
        Ok(policy)
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The scope of a bearer token.
    fn token(&self, token: &str) -> Option<&Scope> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.get(&digest)
    }
}

/// The names a client certificate presents: subject CN and DNS SANs.
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = certificate
        .subject()
        .iter_common_name()
        .filter_map(|name| name.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(extension)) = certificate.subject_alternative_name() {
        for name in &extension.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

/// The user a client certificate presents, as the API server reads one:
/// the subject CN is the name, each O a group.
fn certificate_user(der: &[u8]) -> Option<User> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = certificate.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|group| group.as_str().ok().map(str::to_owned))
        .collect();
    Some(User {
        name,
        groups,
        ..User::default()
    })
}

/// How a request's caller identifies itself.
enum Credentials<'a> {
    /// `authorization: Bearer <token>`.
    Token(&'a str),
    /// The leaf of a client certificate the TLS layer verified.
    Certificate(Vec<u8>),
}

fn credentials<T>(request: &Request<T>) -> Result<Credentials<'_>, Status> {
    if let Some(value) = request.metadata().get("authorization") {
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        return Ok(Credentials::Token(token.trim()));
    }
    let anonymous = || Status::unauthenticated("no client certificate and no bearer token");
    let certificates = request.peer_certs().ok_or_else(anonymous)?;
    let leaf = certificates.first().ok_or_else(anonymous)?;
    Ok(Credentials::Certificate(leaf.as_ref().to_vec()))
}

/// The API's gatekeeper.
#[derive(Clone, Debug)]
pub enum Access {
    /// No policy: every caller is cluster-admin. Only allowed on loopback.
    Open,
    /// Callers must be in the policy.
    Policy(AccessPolicy),
    /// Callers are whom the API server says, granted what its RBAC grants.
    Kubernetes(Arc<KubernetesAccess>),
}

impl Access {
    /// The scope of a request's caller, or why it is refused.
    pub async fn scope<T>(&self, request: &Request<T>, verb: Verb) -> Result<Scope, Status> {
        self.caller(request, verb).await.map(|(scope, _)| scope)
    }

    /// The caller's scope and a name for it in metrics: the matched
    /// certificate name, `token:<tenant>` (or `token:admin`), `user:<name>`
    /// under RBAC, or `local` when access is open. `verb` is what RBAC is
    /// asked for.
    pub async fn caller<T>(
        &self,
        request: &Request<T>,
        verb: Verb,
    ) -> Result<(Scope, String), Status> {
        match self {
            Self::Open => Ok((Scope::Admin, "local".to_owned())),
            Self::Policy(policy) => policy_caller(policy, credentials(request)?),
            Self::Kubernetes(access) => {
                let who = match credentials(request)? {
                    Credentials::Token(token) => Who::Token(token.to_owned()),
                    Credentials::Certificate(der) => {
                        Who::Certificate(certificate_user(&der).ok_or_else(|| {
                            Status::unauthenticated("the client certificate names no user (CN)")
                        })?)
                    }
                };
                kubernetes_caller(access, who, verb).await
            }
        }
    }
}

fn policy_caller(
    policy: &AccessPolicy,
    credentials: Credentials<'_>,
) -> Result<(Scope, String), Status> {
    match credentials {
        Credentials::Token(token) => {
            let scope = policy
                .token(token)
                .cloned()
                .ok_or_else(|| Status::unauthenticated("unknown token"))?;
            let name = match &scope {
                Scope::Tenant(tenant) => format!("token:{tenant}"),
                _ => "token:admin".to_owned(),
            };
            Ok((scope, name))
        }
        Credentials::Certificate(der) => {
            let names = certificate_names(&der);
            names
                .iter()
                .find_map(|name| {
                    policy
                        .clients
                        .get(name)
                        .map(|scope| (scope.clone(), name.clone()))
                })
                .ok_or_else(|| {
                    Status::permission_denied(format!(
                        "client certificate {} is not in the access policy",
                        names.join(", ")
                    ))
                })
        }
    }
}

/// The caller's grant under RBAC, kept fresh while the request holds it.
async fn kubernetes_caller(
    access: &Arc<KubernetesAccess>,
    who: Who,
    verb: Verb,
) -> Result<(Scope, String), Status> {
    let unavailable = |error: super::rbac::RbacError| {
        tracing::info!(error = %flow_model::error_chain(&error), "access denied: the API server cannot be asked");
        Status::unavailable(format!(
            "access denied: {}",
            flow_model::error_chain(&error)
        ))
    };
    let user = match &who {
        Who::Certificate(user) => user.clone(),
        Who::Token(token) => access
            .authenticate(token)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                tracing::info!("access denied: the API server does not accept the token");
                Status::unauthenticated("the API server does not accept this token")
            })?,
    };
    let granted = access.authorize(&user, verb).await.map_err(unavailable)?;
    if granted == super::filter::Granted::Namespaces(Default::default()) {
        tracing::info!(user = %user.name, groups = ?user.groups, verb = verb.as_str(), "access denied in every namespace");
        return Err(Status::permission_denied(format!(
            "{} may not {} {}.{} in any namespace",
            user.name,
            verb.as_str(),
            super::rbac::RESOURCE,
            super::rbac::GROUP
        )));
    }
    let grant = NamespaceGrant::new(granted);
    access.refresh(&grant, who, verb);
    Ok((Scope::Granted(grant), format!("user:{}", user.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_maps_names_and_token_digests_to_scopes() {
        let policy = AccessPolicy::parse(
            "clients:\n- {name: team-acme, tenant: acme}\n- {name: ops, admin: true}\ntokens:\n- {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, tenant: globex}\n",
            "access.yaml",
        )
        .unwrap();
        assert_eq!(policy.clients["team-acme"], Scope::Tenant("acme".into()));
        assert_eq!(policy.clients["ops"], Scope::Admin);
        // sha256("test")
        assert_eq!(policy.token("test"), Some(&Scope::Tenant("globex".into())));
        assert_eq!(policy.token("other"), None);
    }

    #[test]
    fn bad_policies_name_the_entry() {
        let cases = [
            ("clients:\n- {name: a}\n", "clients[0]"),
            (
                "clients:\n- {name: a, tenant: x, admin: true}\n",
                "clients[0]",
            ),
            ("tokens:\n- {sha256: abc, tenant: x}\n", "tokens[0].sha256"),
            ("clientz: []\n", "clientz"),
            (
                "clients:\n- {name: a, tenant: x}\n- {name: a, admin: true}\n",
                "clients[1].name: \"a\" is already listed",
            ),
            (
                &format!(
                    "tokens:\n- {{sha256: {0}, tenant: x}}\n- {{sha256: {0}, admin: true}}\n",
                    "ab".repeat(32)
                ),
                "tokens[1].sha256: this token is already listed",
            ),
        ];
        for (text, expected) in cases {
            let error = AccessPolicy::parse(text, "access.yaml")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected) && error.contains("access.yaml"),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn open_access_is_admin_and_a_policy_refuses_anonymous_callers() {
        let request = Request::new(());
        assert_eq!(
            Access::Open.scope(&request, Verb::Get).await.unwrap(),
            Scope::Admin
        );
        let policy = Access::Policy(AccessPolicy::default());
        assert_eq!(
            policy.scope(&request, Verb::Get).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            policy.scope(&request, Verb::Get).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
