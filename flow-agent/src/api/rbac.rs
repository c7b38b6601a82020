//! Access that follows the cluster's own identities and RBAC
//! (`--grpc-authz kubernetes`).
//!
//! - **Who.** A bearer token goes to the API server in a `TokenReview`
//!   (authentication.k8s.io/v1), so every token kubectl could use works: a
//!   service account's, or on AKS a Microsoft Entra ID token from kubelogin.
//!   A client certificate, already verified against `--grpc-client-ca`, names
//!   the user by its subject CN and the groups by its O entries, as the API
//!   server reads client certificates.
//! - **What.** A `SubjectAccessReview` (authorization.k8s.io/v1) on the
//!   virtual resource [`RESOURCE`] of API group [`GROUP`], with verb `get`
//!   (status, nodes, namespaces), `list` (a replay, the graph) or `watch` (a
//!   following stream). It is asked once for all namespaces: a
//!   ClusterRoleBinding grants every flow. Otherwise it is asked for each
//!   namespace the API server lists: a RoleBinding in `shop-a` grants the
//!   flows with an end in `shop-a`. Groups count, so a binding to an Entra ID
//!   group works.
//! - **How long.** Users, decisions and the namespace list are cached for
//!   the TTL (`--authz-cache-ttl`). A grant held by a request is asked again
//!   each TTL while the request lives, so a revoked binding stops a
//!   following stream within one TTL. An API server that cannot be reached
//!   denies; failures are never cached.
//!
//! The agent's own service account needs `create` on `tokenreviews` and
//! `subjectaccessreviews`, and `list` on `namespaces` (deploy/base/rbac.yaml).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, UserInfo},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::Namespace,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tracing::{debug, info};

use super::filter::{Granted, NamespaceGrant, WeakGrant};

/// The API group of the virtual resource RBAC rules name.
pub const GROUP: &str = "flow-agent.io";
/// The virtual resource: flows, scoped by namespace.
pub const RESOURCE: &str = "flows";
/// How long one call to the API server may take before it counts as
/// unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Access reviews in flight at once for one caller.
const CONCURRENT_REVIEWS: usize = 16;
/// Cached entries of one kind past which expired ones are dropped (and, if
/// still over, all of them).
const MAX_CACHED: usize = 100_000;

/// What a caller asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// One answer about the node: status, nodes, namespaces.
    Get,
    /// A replay of what is buffered, or the learned graph.
    List,
    /// A following stream.
    Watch,
}

impl Verb {
    /// The RBAC verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
        }
    }

    /// `list`, or `watch` for a following request.
    pub fn reading(follow: bool) -> Self {
        if follow { Self::Watch } else { Self::List }
    }
}

/// A user as the API server knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct User {
    /// User name.
    pub name: String,
    /// UID, when the authenticator gives one.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (scopes, ...), passed on to access reviews.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    fn from_info(info: UserInfo) -> Self {
        let UserInfo {
            username,
            uid,
            groups,
            extra,
        } = info;
        Self {
            name: username.unwrap_or_default(),
            uid: uid.unwrap_or_default(),
            groups: groups.unwrap_or_default(),
            extra: extra.unwrap_or_default().into_iter().collect(),
        }
    }
}

/// Why the API server could not decide.
#[derive(Debug, Error)]
pub enum RbacError {
    /// A call failed (network, TLS, an error status).
    #[error("cannot {what} with the API server")]
    Call {
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// A call took too long.
    #[error("the API server did not answer within {} to {what}", humantime::format_duration(*after))]
    Timeout {
        /// What was asked.
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
}

/// A cache of answers that expire.
#[derive(Debug)]
struct Expiring<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> Expiring<K, V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.clone())
    }

    fn put(&self, key: K, value: V, expires: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key, (value, expires));
    }
}

/// Asks the API server who callers are and what they may see, with caches.
pub struct KubernetesAccess {
    client: Client,
    ttl: Duration,
    /// By the token's SHA-256: the user, or `None` for a refused token.
    users: Expiring<[u8; 32], Option<User>>,
    /// By user, namespace (empty: all) and verb.
    decisions: Expiring<(User, String, Verb), bool>,
    namespaces: Expiring<(), Arc<[String]>>,
}

impl std::fmt::Debug for KubernetesAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesAccess")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl KubernetesAccess {
    /// Access checked through `client`, with answers kept for `ttl`.
    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            users: Expiring::new(),
            decisions: Expiring::new(),
            namespaces: Expiring::new(),
        }
    }

    /// How long answers are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The user a bearer token belongs to, or `None` when the API server
    /// does not accept it.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, RbacError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(user) = self.users.get(&digest, now) {
            return Ok(user);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let params = PostParams::default();
        let answer = call("review a token", api.create(&params, &review)).await?;
        let user = answer
            .status
            .filter(|status| status.authenticated == Some(true))
            .and_then(|status| status.user)
            .map(User::from_info)
            .filter(|user| !user.name.is_empty());
        debug!(
            user = user.as_ref().map_or("", |user| user.name.as_str()),
            authenticated = user.is_some(),
            "token reviewed"
        );
        self.users.put(digest, user.clone(), now + self.ttl);
        Ok(user)
    }

    /// What `user` may see with `verb`: every namespace, or those listed.
    pub async fn authorize(&self, user: &User, verb: Verb) -> Result<Granted, RbacError> {
        if self.allowed(user, "", verb).await? {
            return Ok(Granted::All);
        }
        let namespaces = self.namespaces().await?;
        let decisions: Vec<Result<(String, bool), RbacError>> =
            futures::stream::iter(namespaces.iter().cloned())
                .map(|namespace| async move {
                    let allowed = self.allowed(user, &namespace, verb).await?;
                    Ok((namespace, allowed))
                })
                .buffer_unordered(CONCURRENT_REVIEWS)
                .collect()
                .await;
        let mut granted = BTreeSet::new();
        let mut denied = BTreeSet::new();
        for decision in decisions {
            let (namespace, allowed) = decision?;
            if allowed {
                granted.insert(namespace);
            } else {
                denied.insert(namespace);
            }
        }
        log_denials(user, verb, &granted, &denied);
        Ok(Granted::Namespaces(granted))
    }

    /// Keeps `grant` up to date: asks again every TTL while anyone holds it,
    /// and empties it when the API server refuses or cannot be reached.
    pub fn refresh(self: &Arc<Self>, grant: &NamespaceGrant, who: Who, verb: Verb) {
        let access = Arc::downgrade(self);
        let grant = grant.downgrade();
        tokio::spawn(keep_fresh(access, grant, who, verb));
    }

    /// Whether `user` may `verb` flows in `namespace` (empty: in all).
    async fn allowed(&self, user: &User, namespace: &str, verb: Verb) -> Result<bool, RbacError> {
        let key = (user.clone(), namespace.to_owned(), verb);
        let now = Instant::now();
        if let Some(allowed) = self.decisions.get(&key, now) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.to_owned()),
                    resource: Some(RESOURCE.to_owned()),
                    namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
                    verb: Some(verb.as_str().to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let params = PostParams::default();
        let answer = call("review access", api.create(&params, &review)).await?;
        let allowed = answer.status.is_some_and(|status| status.allowed);
        debug!(
            user = %user.name,
            namespace = if namespace.is_empty() { "*" } else { namespace },
            verb = verb.as_str(),
            allowed,
            "access decision"
        );
        self.decisions.put(key, allowed, now + self.ttl);
        Ok(allowed)
    }

    /// The cluster's namespaces.
    async fn namespaces(&self) -> Result<Arc<[String]>, RbacError> {
        let now = Instant::now();
        if let Some(namespaces) = self.namespaces.get(&(), now) {
            return Ok(namespaces);
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let params = ListParams::default();
        let list = call("list namespaces", api.list(&params)).await?;
        let namespaces: Arc<[String]> = list
            .items
            .into_iter()
            .filter_map(|namespace| namespace.metadata.name)
            .collect();
        self.namespaces
            .put((), Arc::clone(&namespaces), now + self.ttl);
        Ok(namespaces)
    }
}

/// How a caller proved who it is, to be asked again as grants expire.
#[derive(Clone)]
pub enum Who {
    /// A bearer token, reviewed again once its review expires.
    Token(String),
    /// A verified client certificate's user.
    Certificate(User),
}

impl std::fmt::Debug for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never a token in a log line.
            Self::Token(_) => f.write_str("Token(..)"),
            Self::Certificate(user) => f.debug_tuple("Certificate").field(user).finish(),
        }
    }
}

async fn keep_fresh(access: Weak<KubernetesAccess>, grant: WeakGrant, who: Who, verb: Verb) {
    loop {
        let Some(ttl) = access.upgrade().map(|access| access.ttl) else {
            return;
        };
        tokio::time::sleep(ttl).await;
        let (Some(access), Some(held)) = (access.upgrade(), grant.upgrade()) else {
            return;
        };
        let granted = match &who {
            Who::Certificate(user) => access.authorize(user, verb).await,
            Who::Token(token) => match access.authenticate(token).await {
                Ok(Some(user)) => access.authorize(&user, verb).await,
                Ok(None) => Ok(Granted::Namespaces(BTreeSet::new())),
                Err(error) => Err(error),
            },
        };
        let granted = granted.unwrap_or_else(|error| {
            info!(error = %flow_model::error_chain(&error), "access cannot be checked again: the stream sees nothing until it can");
            Granted::Namespaces(BTreeSet::new())
        });
        held.replace(granted);
    }
}

/// One line at info for what was denied: the user, and the namespaces.
fn log_denials(user: &User, verb: Verb, granted: &BTreeSet<String>, denied: &BTreeSet<String>) {
    if denied.is_empty() {
        return;
    }
    const SHOWN: usize = 8;
    let mut shown: Vec<&str> = denied.iter().take(SHOWN).map(String::as_str).collect();
    if denied.len() > SHOWN {
        shown.push("...");
    }
    info!(
        user = %user.name,
        groups = ?user.groups,
        verb = verb.as_str(),
        granted = granted.len(),
        denied = denied.len(),
        namespaces = %shown.join(","),
        "flows denied in these namespaces"
    );
}

/// Runs one call to the API server under [`CALL_TIMEOUT`].
async fn call<T>(
    what: &'static str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, RbacError> {
    match tokio::time::timeout(CALL_TIMEOUT, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(source)) => Err(RbacError::Call { what, source }),
        Err(_) => Err(RbacError::Timeout {
            what,
            after: CALL_TIMEOUT,
        }),
    }
}
