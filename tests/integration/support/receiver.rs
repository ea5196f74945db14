//! A local HTTP receiver for notifications: records every request (method, path, headers,
//! body) and answers as told: a status per request in turn, or never (a receiver that hangs).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::git::free_port;

#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the receiver answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// These statuses, one per request in turn, then 200.
    Statuses(Vec<u16>),
    /// Reads the request and never answers.
    Hang,
}

pub struct Receiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Requests answered with a status (hanging ones are recorded but not counted here).
    attempts: Arc<Mutex<usize>>,
}

impl Receiver {
    pub fn start(answer: Answer) -> Receiver {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        let received = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let (r, a) = (received.clone(), attempts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, a, answer) = (r.clone(), a.clone(), answer.clone());
                std::thread::spawn(move || serve(stream, &r, &a, &answer));
            }
        });
        Receiver {
            port,
            received,
            attempts,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        *self.attempts.lock().expect("lock")
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits until `count` requests arrived; returns them all.
    pub fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let all = self.all();
            if all.len() >= count {
                return all;
            }
            assert!(
                start.elapsed() < within,
                "expected {count} requests within {within:?}, got {}: {:?}",
                all.len(),
                all.iter().map(|r| r.text()).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve(
    stream: TcpStream,
    received: &Mutex<Vec<Received>>,
    attempts: &Mutex<usize>,
    answer: &Answer,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    // Keep-alive: one request after another on the same connection.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let length: usize = (headers.iter())
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        received.lock().expect("lock").push(Received {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        });
        let status = match answer {
            Answer::Hang => {
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            Answer::Statuses(list) => {
                let mut n = attempts.lock().expect("lock");
                *n += 1;
                list.get(*n - 1).copied().unwrap_or(200)
            }
        };
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
        let mut w = &stream;
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
