//! A tiny HTTP/1.1 server on 127.0.0.1 for the download tests: it serves scripted
//! replies per path, including broken ones (dropped connections, cut-off bodies).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One scripted answer.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// 200 with this body.
    Ok(Vec<u8>),
    /// This status and an empty body.
    Status(u16),
    /// 200 announcing the whole body's length, but only its first `sent` bytes,
    /// then the connection closes.
    Truncated { body: Vec<u8>, sent: usize },
    /// The connection closes without an answer.
    Drop,
    /// 200 announcing the whole body's length, its first `sent` bytes, then nothing for
    /// `hold` before the connection closes (a stalled server).
    Stall {
        body: Vec<u8>,
        sent: usize,
        hold: Duration,
    },
}

#[derive(Default)]
struct State {
    /// Replies per path; the last one repeats.
    routes: HashMap<String, VecDeque<Reply>>,
    /// Requests per path.
    hits: HashMap<String, usize>,
}

/// The server; it stops when dropped.
pub(crate) struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &s);
                }
            }
        });
        TestServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Answers requests for `path` (e.g. `/a.gz`) with `replies` in turn, repeating the last.
    pub(crate) fn script(&self, path: &str, replies: Vec<Reply>) {
        let mut state = self.state.lock().unwrap();
        state.routes.insert(path.to_owned(), replies.into());
    }

    /// The number of requests for `path` so far.
    pub(crate) fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request and answers it as scripted.
fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let reply = {
        let mut state = state.lock().unwrap();
        *state.hits.entry(path.clone()).or_default() += 1;
        match state.routes.get_mut(&path) {
            Some(replies) if replies.len() > 1 => replies.pop_front(),
            Some(replies) => replies.front().cloned(),
            None => None,
        }
        .unwrap_or(Reply::Status(404))
    };
    let head = |status: u16, len: usize| {
        format!(
            "HTTP/1.1 {status} Scripted\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = match reply {
        Reply::Ok(body) => stream
            .write_all(head(200, body.len()).as_bytes())
            .and_then(|()| stream.write_all(&body)),
        Reply::Status(status) => stream.write_all(head(status, 0).as_bytes()),
        Reply::Truncated { body, sent } => stream
            .write_all(head(200, body.len()).as_bytes())
            .and_then(|()| stream.write_all(&body[..sent.min(body.len())])),
        Reply::Drop => Ok(()),
        Reply::Stall { body, sent, hold } => {
            let result = stream
                .write_all(head(200, body.len()).as_bytes())
                .and_then(|()| stream.write_all(&body[..sent.min(body.len())]))
                .and_then(|()| stream.flush());
            std::thread::sleep(hold);
            result
        }
    };
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}
