//! The pub/sub side of the Redis protocol (RESP2), spoken by ingestd itself so the read
//! loop can drain the socket at once and slice messages out of the read buffer without
//! copying them. redis-rs's `aio::PubSub` parses every message into a `Value` (four
//! allocations) and hands it over through an unbounded channel: when decoding falls
//! behind, that channel grows without limit (300 MiB measured at the ingest ceiling).
//!
//! Connection set-up stays with redis-rs where it can: URLs are parsed into its
//! `ConnectionInfo` and commands are packed with its `cmd`. TLS (`rediss://`) goes through
//! the same rustls stack as every other client of the process.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest RESP header line accepted (`*3`, `$1234`, `+OK`, an error text).
const MAX_LINE: usize = 64 * 1024;
/// A read never asks for less room than this.
const READ_CHUNK: usize = 64 * 1024;

/// Why a session could not start or ended.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server refused the credentials (WRONGPASS, NOAUTH, NOPERM): retrying cannot help.
    #[error("{0}")]
    Auth(String),
    /// Any other error reply, or a reply that is not RESP.
    #[error("{0}")]
    Protocol(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One pub/sub message, its parts sliced from the bytes read (no copy).
pub struct RawMessage {
    pub channel: Bytes,
    /// The PSUBSCRIBE pattern it matched (`pmessage`), if any.
    pub pattern: Option<Bytes>,
    pub payload: Bytes,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A subscribed connection: read with [`Subscriber::read`].
pub struct Subscriber {
    stream: Box<dyn Stream>,
    buffer: BytesMut,
    /// Messages that arrived while the subscriptions were being confirmed.
    early: Vec<RawMessage>,
}

/// How to reach the server: the parsed URL plus, for `rediss://`, the TLS settings.
pub struct Endpoint {
    pub info: ConnectionInfo,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
}

impl Subscriber {
    /// Connects, authenticates, subscribes to every channel and pattern, and waits until
    /// the server has confirmed each of them.
    pub async fn connect(
        endpoint: &Endpoint,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Subscriber, WireError> {
        let timeout = endpoint.connect_timeout;
        let stream = tokio::time::timeout(timeout, open(endpoint))
            .await
            .map_err(|_| WireError::Timeout(timeout))??;
        let mut subscriber = Subscriber {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            early: Vec::new(),
        };
        tokio::time::timeout(timeout, subscriber.handshake(endpoint, channels, patterns))
            .await
            .map_err(|_| WireError::Timeout(timeout))??;
        Ok(subscriber)
    }

    async fn handshake(
        &mut self,
        endpoint: &Endpoint,
        channels: &[String],
        patterns: &[String],
    ) -> Result<(), WireError> {
        let settings = endpoint.info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            self.stream.write_all(&auth.get_packed_command()).await?;
            match self.next_frame().await? {
                Frame::Simple(reply) if reply == "OK" => {}
                Frame::Error(error) => return Err(classify_error(error)),
                other => return Err(unexpected("AUTH", &other)),
            }
        }
        // Names the connection in CLIENT LIST; an ACL user without CLIENT may refuse it.
        let name = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("ingestd-pubsub")
            .get_packed_command();
        self.stream.write_all(&name).await?;
        match self.next_frame().await? {
            Frame::Simple(reply) if reply == "OK" => {}
            Frame::Error(error) if is_auth_error(&error) && !error.starts_with("NOPERM") => {
                return Err(WireError::Auth(error));
            }
            Frame::Error(_) => {}
            other => return Err(unexpected("CLIENT SETNAME", &other)),
        }
        let mut expected = 0;
        if !channels.is_empty() {
            let command = redis::cmd("SUBSCRIBE").arg(channels).get_packed_command();
            self.stream.write_all(&command).await?;
            expected += channels.len();
        }
        if !patterns.is_empty() {
            let command = redis::cmd("PSUBSCRIBE").arg(patterns).get_packed_command();
            self.stream.write_all(&command).await?;
            expected += patterns.len();
        }
        while expected > 0 {
            match self.next_frame().await? {
                Frame::Push(kind) if kind == "subscribe" || kind == "psubscribe" => {
                    expected -= 1;
                }
                Frame::Message(message) => self.early.push(message),
                Frame::Error(error) => return Err(classify_error(error)),
                other => return Err(unexpected("SUBSCRIBE", &other)),
            }
        }
        Ok(())
    }

    /// Reads once from the socket and returns the messages completed by it (possibly
    /// none), or `None` at end of stream. Holds no state between calls but the unread
    /// tail of a message, so it can be raced against a shutdown at any time.
    pub async fn read(&mut self) -> Result<Option<Vec<RawMessage>>, WireError> {
        if !self.early.is_empty() {
            return Ok(Some(std::mem::take(&mut self.early)));
        }
        if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 4 {
            self.buffer.reserve(READ_CHUNK);
        }
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Ok(None);
        }
        let mut spans = Vec::new();
        let mut consumed = 0;
        loop {
            match parse(&self.buffer[consumed..])? {
                None => break,
                Some((Parsed::Message(span), length)) => {
                    spans.push(span.shift(consumed));
                    consumed += length;
                }
                Some((Parsed::Error(error), _)) => return Err(classify_error(error)),
                Some((Parsed::Other, length)) => consumed += length,
            }
        }
        // One shared buffer for every message of this read: slicing it is a refcount.
        let bytes = self.buffer.split_to(consumed).freeze();
        Ok(Some(
            spans.into_iter().map(|span| span.message(&bytes)).collect(),
        ))
    }

    /// The next whole frame, during the handshake (not the hot path).
    async fn next_frame(&mut self) -> Result<Frame, WireError> {
        loop {
            if let Some((parsed, length)) = parse_frame(&self.buffer)? {
                let frame = self.buffer.split_to(length).freeze();
                return Ok(parsed.into_frame(&frame));
            }
            self.buffer.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

async fn open(endpoint: &Endpoint) -> Result<Box<dyn Stream>, WireError> {
    match endpoint.info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(WireError::Protocol(
                    "rediss:// with #insecure is not supported: trust the server's CA with redis.tls_ca_file instead".to_string(),
                ));
            }
            let Some(tls) = &endpoint.tls else {
                return Err(WireError::Protocol(
                    "rediss:// needs TLS settings".to_string(),
                ));
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|error| {
                WireError::Protocol(format!("{host:?} is not a TLS server name: {error}"))
            })?;
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, stream)
                .await?;
            Ok(Box::new(stream))
        }
        ConnectionAddr::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        other => Err(WireError::Protocol(format!(
            "unsupported Redis address {other:?}"
        ))),
    }
}

fn is_auth_error(error: &str) -> bool {
    [
        "WRONGPASS",
        "NOAUTH",
        "NOPERM",
        "ERR AUTH",
        "ERR invalid password",
    ]
    .iter()
    .any(|prefix| error.starts_with(prefix))
}

fn classify_error(error: String) -> WireError {
    if is_auth_error(&error) {
        WireError::Auth(error)
    } else {
        WireError::Protocol(error)
    }
}

fn unexpected(command: &str, frame: &Frame) -> WireError {
    WireError::Protocol(format!("unexpected reply to {command}: {frame:?}"))
}

/// Where a message's parts lie in the buffer.
struct Span {
    channel: Range<usize>,
    pattern: Option<Range<usize>>,
    payload: Range<usize>,
}

impl Span {
    fn shift(self, by: usize) -> Span {
        let shift = |range: Range<usize>| range.start + by..range.end + by;
        Span {
            channel: shift(self.channel),
            pattern: self.pattern.map(shift),
            payload: shift(self.payload),
        }
    }

    fn message(self, bytes: &Bytes) -> RawMessage {
        RawMessage {
            channel: bytes.slice(self.channel),
            pattern: self.pattern.map(|pattern| bytes.slice(pattern)),
            payload: bytes.slice(self.payload),
        }
    }
}

/// A frame as the hot path needs it: a message, an error, or anything else (confirmations,
/// pongs), whose length is all that matters.
enum Parsed {
    Message(Span),
    Error(String),
    Other,
}

/// A whole frame, for the handshake.
#[derive(Debug)]
enum Frame {
    Simple(String),
    Error(String),
    /// A pub/sub array other than a message: its kind (`subscribe`, `pong`, ...).
    Push(String),
    Message(RawMessage),
}

impl std::fmt::Debug for RawMessage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RawMessage")
            .field("channel", &self.channel)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

/// [`parse`] keeping what the handshake needs to see.
fn parse_frame(buffer: &[u8]) -> Result<Option<(ParsedFrame, usize)>, WireError> {
    let Some((line, mut at)) = line(buffer, 0)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(&line[1..]).into_owned();
    let parsed = match line[0] {
        b'+' | b':' => ParsedFrame::Simple(text()),
        b'-' => ParsedFrame::Error(text()),
        b'*' => {
            let count = number(&line[1..])?;
            let mut items = Vec::with_capacity(count.min(8));
            for _ in 0..count {
                let Some((item, next)) = element(buffer, at)? else {
                    return Ok(None);
                };
                items.push(item);
                at = next;
            }
            ParsedFrame::Array(items)
        }
        other => return Err(not_resp(other)),
    };
    Ok(Some((parsed, at)))
}

enum ParsedFrame {
    Simple(String),
    Error(String),
    Array(Vec<Range<usize>>),
}

impl ParsedFrame {
    fn into_frame(self, bytes: &Bytes) -> Frame {
        match self {
            ParsedFrame::Simple(text) => Frame::Simple(text),
            ParsedFrame::Error(text) => Frame::Error(text),
            ParsedFrame::Array(items) => {
                let part = |index: usize| items.get(index).map(|range| bytes.slice(range.clone()));
                let kind = part(0).unwrap_or_default();
                match (&kind[..], items.len()) {
                    (b"message", 3) => Frame::Message(RawMessage {
                        channel: part(1).unwrap_or_default(),
                        pattern: None,
                        payload: part(2).unwrap_or_default(),
                    }),
                    (b"pmessage", 4) => Frame::Message(RawMessage {
                        channel: part(2).unwrap_or_default(),
                        pattern: part(1),
                        payload: part(3).unwrap_or_default(),
                    }),
                    _ => Frame::Push(String::from_utf8_lossy(&kind).into_owned()),
                }
            }
        }
    }
}

/// Parses one frame at the start of `buffer`: `None` until it is complete. The hot
/// path: no allocation for a message.
fn parse(buffer: &[u8]) -> Result<Option<(Parsed, usize)>, WireError> {
    let Some((header, mut at)) = line(buffer, 0)? else {
        return Ok(None);
    };
    match header[0] {
        b'*' => {
            let count = number(&header[1..])?;
            let mut items: [Range<usize>; 4] = Default::default();
            for index in 0..count {
                let Some((item, next)) = element(buffer, at)? else {
                    return Ok(None);
                };
                if let Some(slot) = items.get_mut(index) {
                    *slot = item;
                }
                at = next;
            }
            let parsed = match (&buffer[items[0].clone()], count) {
                (b"message", 3) => Parsed::Message(Span {
                    channel: items[1].clone(),
                    pattern: None,
                    payload: items[2].clone(),
                }),
                (b"pmessage", 4) => Parsed::Message(Span {
                    channel: items[2].clone(),
                    pattern: Some(items[1].clone()),
                    payload: items[3].clone(),
                }),
                _ => Parsed::Other,
            };
            Ok(Some((parsed, at)))
        }
        b'-' => Ok(Some((
            Parsed::Error(String::from_utf8_lossy(&header[1..]).into_owned()),
            at,
        ))),
        b'+' | b':' => Ok(Some((Parsed::Other, at))),
        other => Err(not_resp(other)),
    }
}

/// One array element at `at`: a bulk string's content range (an integer's text range).
fn element(buffer: &[u8], at: usize) -> Result<Option<(Range<usize>, usize)>, WireError> {
    let Some((line, next)) = line(buffer, at)? else {
        return Ok(None);
    };
    match line[0] {
        b'$' => {
            let Ok(length) = isize::try_from(number_signed(&line[1..])?) else {
                return Err(WireError::Protocol("bulk length out of range".to_string()));
            };
            if length < 0 {
                // A null bulk string: empty.
                return Ok(Some((next..next, next)));
            }
            let end = next + length as usize;
            if buffer.len() < end + 2 {
                return Ok(None);
            }
            if &buffer[end..end + 2] != b"\r\n" {
                return Err(WireError::Protocol(
                    "bulk string not followed by CRLF".to_string(),
                ));
            }
            Ok(Some((next..end, end + 2)))
        }
        b':' | b'+' => Ok(Some((at + 1..next - 2, next))),
        other => Err(not_resp(other)),
    }
}

/// The header line at `at` (without CRLF) and where the next one starts.
fn line(buffer: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let rest = &buffer[at.min(buffer.len())..];
    let window = &rest[..rest.len().min(MAX_LINE)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(0) => Err(WireError::Protocol("empty RESP line".to_string())),
        Some(end) if window[end - 1] == b'\r' && end >= 2 => {
            Ok(Some((&rest[..end - 1], at + end + 1)))
        }
        Some(_) => Err(WireError::Protocol("RESP line without CR".to_string())),
        None if window.len() == MAX_LINE => {
            Err(WireError::Protocol("RESP line too long".to_string()))
        }
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Result<usize, WireError> {
    let value = number_signed(digits)?;
    usize::try_from(value).map_err(|_| WireError::Protocol(format!("negative count {value}")))
}

fn number_signed(digits: &[u8]) -> Result<i64, WireError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            WireError::Protocol(format!(
                "bad RESP number {:?}",
                String::from_utf8_lossy(digits)
            ))
        })
}

fn not_resp(byte: u8) -> WireError {
    WireError::Protocol(format!("not a RESP2 reply (type byte {byte:#04x})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> (Vec<(String, Option<String>, String)>, usize) {
        let mut at = 0;
        let mut out = Vec::new();
        while let Some((parsed, length)) = parse(&input[at..]).unwrap() {
            if let Parsed::Message(span) = parsed {
                let bytes = Bytes::copy_from_slice(input);
                let message = span.shift(at).message(&bytes);
                out.push((
                    String::from_utf8(message.channel.to_vec()).unwrap(),
                    message
                        .pattern
                        .map(|pattern| String::from_utf8(pattern.to_vec()).unwrap()),
                    String::from_utf8(message.payload.to_vec()).unwrap(),
                ));
            }
            at += length;
        }
        (out, at)
    }

    #[test]
    fn messages_patterns_and_control_frames() {
        let input = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhe\r\no\r\n*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\ncx\r\n$0\r\n\r\n";
        let (messages, consumed) = parse_all(input);
        assert_eq!(consumed, input.len());
        assert_eq!(
            messages,
            [
                ("ch".to_string(), None, "he\r\no".to_string()),
                ("cx".to_string(), Some("c*".to_string()), String::new()),
            ]
        );
    }

    #[test]
    fn an_incomplete_frame_waits_at_every_cut() {
        let input = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..input.len() {
            assert!(parse(&input[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(parse(input).unwrap().is_some());
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        assert!(parse(b"hello\r\n").is_err());
        assert!(parse(b"*x\r\n").is_err());
        assert!(parse(b"*1\r\n$3\r\nabcd\r\n").is_err());
        assert!(matches!(
            classify_error("WRONGPASS invalid username-password pair".to_string()),
            WireError::Auth(_)
        ));
    }
}
