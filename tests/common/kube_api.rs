//! A small HTTP server that speaks the part of the Kubernetes API a watcher uses:
//! list (JSON `...List`) and watch (chunked stream of `{"type", "object"}`
//! events), per resource path. Tests set each collection's objects and push
//! watch events, including errors that force a relist. More collections
//! (a namespaced path) can be added, their lists' queries read back, and a
//! list made to fail with a status code.
//!
//! It also answers TokenReviews (from a table of tokens) and
//! SubjectAccessReviews on `flows.flow-agent.io` (from a table of bindings,
//! to users or groups, in a namespace or cluster-wide), counts them, and can
//! refuse them all as an API server outage would.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

/// Every collection the identity source watches: path and list kind.
pub const COLLECTIONS: [(&str, &str, &str); 11] = [
    ("/api/v1/namespaces", "v1", "NamespaceList"),
    ("/api/v1/pods", "v1", "PodList"),
    ("/api/v1/services", "v1", "ServiceList"),
    ("/api/v1/nodes", "v1", "NodeList"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSliceList",
    ),
    ("/apis/apps/v1/replicasets", "apps/v1", "ReplicaSetList"),
    ("/apis/apps/v1/deployments", "apps/v1", "DeploymentList"),
    ("/apis/apps/v1/statefulsets", "apps/v1", "StatefulSetList"),
    ("/apis/apps/v1/daemonsets", "apps/v1", "DaemonSetList"),
    ("/apis/batch/v1/jobs", "batch/v1", "JobList"),
    ("/apis/batch/v1/cronjobs", "batch/v1", "CronJobList"),
];

struct Collection {
    api_version: String,
    list_kind: String,
    objects: Vec<Value>,
    lists_served: usize,
    watches_started: usize,
    /// The query string of each list.
    queries: Vec<String>,
    /// Answer lists with this HTTP status instead.
    failure: Option<u16>,
}

impl Collection {
    fn new(api_version: &str, list_kind: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            list_kind: list_kind.to_owned(),
            objects: Vec::new(),
            lists_served: 0,
            watches_started: 0,
            queries: Vec::new(),
            failure: None,
        }
    }
}

/// A binding of the flows resource: to a user or a group, in one namespace
/// (a RoleBinding) or in all (`None`: a ClusterRoleBinding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// `User` or `Group`.
    pub kind: &'static str,
    /// The user's or group's name.
    pub name: String,
    /// The RoleBinding's namespace.
    pub namespace: Option<String>,
}

#[derive(Default)]
struct Reviews {
    /// Token -> (user, groups).
    tokens: HashMap<String, (String, Vec<String>)>,
    bindings: Vec<Binding>,
    token_reviews: usize,
    access_reviews: usize,
    down: bool,
}

impl Reviews {
    fn token_review(&mut self, body: &Value) -> Value {
        self.token_reviews += 1;
        let token = body["spec"]["token"].as_str().unwrap_or_default();
        let status = match self.tokens.get(token) {
            Some((user, groups)) => json!({
                "authenticated": true,
                "user": {"username": user, "uid": format!("uid-{user}"), "groups": groups},
            }),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
    }

    fn access_review(&mut self, body: &Value) -> Value {
        self.access_reviews += 1;
        let spec = &body["spec"];
        let attributes = &spec["resourceAttributes"];
        let user = spec["user"].as_str().unwrap_or_default();
        let groups: Vec<&str> = spec["groups"]
            .as_array()
            .map(|groups| groups.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let namespace = attributes["namespace"].as_str().unwrap_or_default();
        let flows = attributes["group"] == "flow-agent.io"
            && attributes["resource"] == "flows"
            && ["get", "list", "watch"].contains(&attributes["verb"].as_str().unwrap_or_default());
        let allowed = flows
            && self.bindings.iter().any(|binding| {
                let subject = match binding.kind {
                    "User" => binding.name == user,
                    _ => groups.contains(&binding.name.as_str()),
                };
                subject
                    && binding
                        .namespace
                        .as_deref()
                        .is_none_or(|bound| !namespace.is_empty() && bound == namespace)
            });
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "status": {"allowed": allowed},
        })
    }
}

struct State {
    collections: Mutex<HashMap<String, Collection>>,
    reviews: Mutex<Reviews>,
    /// (path, event) for every watcher of that path.
    events: broadcast::Sender<(String, Value)>,
}

/// The running server.
#[derive(Clone)]
pub struct KubeApi {
    state: Arc<State>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl KubeApi {
    /// Starts serving on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1".parse().unwrap()).await
    }

    /// Starts serving on a free port of `address` (the host's end of a lab
    /// node's link, for an agent inside the node).
    pub async fn start_on(address: std::net::IpAddr) -> Self {
        let listener = TcpListener::bind((address, 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (events, _) = broadcast::channel(256);
        let state = Arc::new(State {
            collections: Mutex::new(
                COLLECTIONS
                    .iter()
                    .map(|(path, api_version, list_kind)| {
                        ((*path).to_owned(), Collection::new(api_version, list_kind))
                    })
                    .collect(),
            ),
            reviews: Mutex::default(),
            events,
        });
        let served = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(Arc::clone(&served), stream));
            }
        });
        Self { state, url }
    }

    /// Accepts `token` as `user` in `groups`.
    pub fn token(&self, token: &str, user: &str, groups: &[&str]) {
        self.state.reviews.lock().unwrap().tokens.insert(
            token.to_owned(),
            (
                user.to_owned(),
                groups.iter().map(|group| (*group).to_owned()).collect(),
            ),
        );
    }

    /// Replaces the bindings of the flows resource.
    pub fn bindings(&self, bindings: Vec<Binding>) {
        self.state.reviews.lock().unwrap().bindings = bindings;
    }

    /// Makes every review fail with 503, as an API server outage (`false`:
    /// answer again).
    pub fn reviews_down(&self, down: bool) {
        self.state.reviews.lock().unwrap().down = down;
    }

    /// (TokenReviews, SubjectAccessReviews) answered or refused so far.
    pub fn reviews(&self) -> (usize, usize) {
        let reviews = self.state.reviews.lock().unwrap();
        (reviews.token_reviews, reviews.access_reviews)
    }

    /// Replaces what a list of `path` returns.
    pub fn set(&self, path: &str, objects: Vec<Value>) {
        let mut collections = self.state.collections.lock().unwrap();
        collections.get_mut(path).unwrap().objects = objects;
    }

    /// Serves another collection (e.g. a namespaced path,
    /// `/apis/discovery.k8s.io/v1/namespaces/NS/endpointslices`).
    pub fn add(&self, path: &str, api_version: &str, list_kind: &str) {
        self.state
            .collections
            .lock()
            .unwrap()
            .insert(path.to_owned(), Collection::new(api_version, list_kind));
    }

    /// Makes lists of `path` fail with this HTTP status (`None`: answer again).
    pub fn fail(&self, path: &str, code: Option<u16>) {
        self.state
            .collections
            .lock()
            .unwrap()
            .get_mut(path)
            .unwrap()
            .failure = code;
    }

    /// The query strings `path` was listed with, in order.
    pub fn queries(&self, path: &str) -> Vec<String> {
        self.state.collections.lock().unwrap()[path].queries.clone()
    }

    /// How many times `path` was listed.
    pub fn lists_served(&self, path: &str) -> usize {
        self.state.collections.lock().unwrap()[path].lists_served
    }

    /// Waits until `path` has been watched `count` times (events sent before a
    /// watcher subscribes are lost, as with a real API server).
    pub async fn watched(&self, path: &str, count: usize) {
        for _ in 0..1500 {
            if self.state.collections.lock().unwrap()[path].watches_started >= count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{path} was never watched {count} times");
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`, `ERROR`) to the
    /// watchers of `path`.
    pub fn event(&self, path: &str, kind: &str, object: Value) {
        let _ = self
            .state
            .events
            .send((path.to_owned(), json!({"type": kind, "object": object})));
    }
}

async fn serve(state: Arc<State>, stream: TcpStream) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        // Headers until the blank line; only POSTs carry a body.
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if request_line.starts_with("POST ") {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (code, answer) = review(&state, path, &body);
            let answer = answer.to_string();
            let response = format!(
                "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                if code == 201 { "Created" } else { "Refused" },
                answer.len()
            );
            if writer.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if !state.collections.lock().unwrap().contains_key(path) {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#;
            let response = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if writer.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        };
        if query
            .split('&')
            .any(|parameter| parameter == "watch=true" || parameter == "watch=1")
        {
            // A watch holds the connection until the test ends.
            let mut events = state.events.subscribe();
            state
                .collections
                .lock()
                .unwrap()
                .get_mut(path)
                .unwrap()
                .watches_started += 1;
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if writer.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let _ = writer.flush().await;
            while let Ok((event_path, event)) = events.recv().await {
                if event_path != path {
                    continue;
                }
                let line = format!("{event}\n");
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if writer.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                let _ = writer.flush().await;
                if event["type"] == "ERROR" {
                    // Like the API server: the stream ends after an error.
                    let _ = writer.write_all(b"0\r\n\r\n").await;
                    return;
                }
            }
            return;
        }
        let (code, body) = {
            let mut collections = state.collections.lock().unwrap();
            let collection = collections.get_mut(path).unwrap();
            collection.lists_served += 1;
            collection.queries.push(query.to_owned());
            match collection.failure {
                Some(code) => (
                    code,
                    json!({
                        "apiVersion": "v1",
                        "kind": "Status",
                        "status": "Failure",
                        "code": code,
                        "reason": "Forbidden",
                        "message": format!("the test refuses {path}"),
                    })
                    .to_string(),
                ),
                None => (
                    200,
                    json!({
                        "apiVersion": collection.api_version,
                        "kind": collection.list_kind,
                        "metadata": {"resourceVersion": format!("{}", collection.lists_served * 100)},
                        "items": collection.objects,
                    })
                    .to_string(),
                ),
            }
        };
        let response = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            if code == 200 { "OK" } else { "Refused" },
            body.len()
        );
        if writer.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The answer to a review POSTed to `path`.
fn review(state: &State, path: &str, body: &Value) -> (u16, Value) {
    let mut reviews = state.reviews.lock().unwrap();
    let answer = match path {
        "/apis/authentication.k8s.io/v1/tokenreviews" => reviews.token_review(body),
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" => reviews.access_review(body),
        _ => {
            return (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
            );
        }
    };
    if reviews.down {
        return (
            503,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": 503,
                "reason": "ServiceUnavailable",
                "message": "the test's API server is down",
            }),
        );
    }
    (201, answer)
}
