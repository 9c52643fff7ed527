//! The messages between a worker and the pid 1 of its long-lived sandbox, over a Unix
//! stream socket: each a little-endian `u32` length and a protobuf body. A run request
//! carries the action's stdout and stderr descriptors (SCM_RIGHTS) on its first bytes.
//!
//! Protobuf (prost's derive, no `.proto`) because both ends are this binary and it already
//! encodes protobuf; the framing is the length prefix alone.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use prost::Message;

/// Largest message either side accepts: far above any command line Linux can exec.
pub const MAX_MESSAGE: usize = 64 << 20;

/// One action to run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunRequest {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub argv: Vec<Vec<u8>>,
    /// `NAME=value` entries.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub env: Vec<Vec<u8>>,
    /// The working directory, as the sandbox sees it.
    #[prost(bytes = "vec", tag = "3")]
    pub cwd: Vec<u8>,
}

/// The sandbox's answer: first a `ready` greeting, then one per request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    #[prost(bool, tag = "1")]
    pub ready: bool,
    /// Exit code, or 128 + the signal that killed the action.
    #[prost(int32, tag = "2")]
    pub exit_code: i32,
    /// Why the command could not start (nothing ran), if it could not.
    #[prost(string, tag = "3")]
    pub start_error: String,
    /// The sandbox could not be emptied after the action and must not run another.
    #[prost(bool, tag = "4")]
    pub tainted: bool,
}

pub fn frame(message: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + message.encoded_len());
    out.extend_from_slice(&(message.encoded_len() as u32).to_le_bytes());
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// The body length of a frame, checked.
pub fn body_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a sandbox message of {len} bytes is over the limit"),
        ));
    }
    Ok(len)
}

pub fn decode<M: Message + Default>(body: &[u8]) -> io::Result<M> {
    M::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Sends as much of `frame` as the socket takes in one call, with `fds` attached.
pub fn send_with_fds(
    socket: &impl AsRawFd,
    frame: &[u8],
    fds: &[&dyn AsRawFd],
) -> io::Result<usize> {
    let raw: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[io::IoSlice::new(frame)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)
}

/// Blocking: the next request and its two descriptors, or `None` at end of stream.
pub fn recv_request(socket: &mut UnixStream) -> io::Result<Option<(RunRequest, [OwnedFd; 2])>> {
    let mut header = [0u8; 4];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let (got, mut fds) = {
        let mut iov = [io::IoSliceMut::new(&mut header)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: descriptors the kernel just installed for us.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    socket.read_exact(&mut header[got..])?;
    let mut body = vec![0; body_len(header)?];
    socket.read_exact(&mut body)?;
    let request = decode(&body)?;
    let (Some(stderr), Some(stdout), None) = (fds.pop(), fds.pop(), fds.pop()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a run request needs exactly two descriptors",
        ));
    };
    Ok(Some((request, [stdout, stderr])))
}

/// Blocking: sends a reply.
pub fn send_reply(socket: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    socket.write_all(&frame(reply))
}
