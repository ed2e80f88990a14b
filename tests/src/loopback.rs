//! A tiny HTTP/1.1 server on 127.0.0.1:0 for the outbound-HTTP tests: it
//! answers every request the same way and counts the connections it
//! accepts, so a test can tell that a refused request never connected.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// What a loopback server answers to every request.
#[derive(Clone)]
pub enum Answer {
    /// 200 with this body.
    Body(&'static str),
    /// 302 to this URL.
    Redirect(String),
    /// Reads the request and never answers; reports when the client hangs up.
    Silence,
    /// 200 with a body of this many bytes, sent as fast as it is read.
    Flood(u64),
}

pub struct Loopback {
    pub addr: SocketAddr,
    /// Connections accepted.
    hits: Arc<AtomicUsize>,
    /// One message per silent connection the client closed.
    pub hung_up: mpsc::Receiver<()>,
}

impl Loopback {
    pub fn start(answer: Answer) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (hung_up_tx, hung_up) = mpsc::channel();
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                let hung_up = hung_up_tx.clone();
                std::thread::spawn(move || serve(stream, answer, hung_up));
            }
        });
        Loopback {
            addr,
            hits,
            hung_up,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, answer: Answer, hung_up: mpsc::Sender<()>) {
    // The request head; a GET has no body.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    match answer {
        Answer::Body(body) => {
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).ok();
        }
        Answer::Redirect(to) => {
            let reply = format!(
                "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(reply.as_bytes()).ok();
        }
        Answer::Silence => {
            // Read until the client closes the connection (0 or an error).
            let mut rest = [0u8; 1024];
            while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
            hung_up.send(()).ok();
        }
        Answer::Flood(bytes) => {
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {bytes}\r\nconnection: close\r\n\r\n");
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    }
}
