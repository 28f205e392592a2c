//! A minimal authoritative DNS server on 127.0.0.1 (UDP), for tests: answers A, AAAA and
//! SRV from a table with one TTL, and can be switched to SERVFAIL or empty answers.

#![allow(unreachable_pub)]

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{
        rdata::{A, AAAA, SRV},
        Name, RData, Record, RecordType,
    },
};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    ServFail,
    Empty,
}

#[derive(Default)]
struct Zone {
    hosts: HashMap<String, Vec<IpAddr>>,
    srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
    ttl: u32,
    mode: Option<Mode>,
    queries: usize,
}

/// The server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    pub async fn start(ttl: u32) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let task = tokio::spawn(serve(sock, zone.clone()));
        Self { addr, zone, task }
    }

    pub fn set_host(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
        self.zone.lock().unwrap().hosts.insert(key(name), ips);
    }

    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let records = records
            .iter()
            .map(|&(p, w, port, t)| (p, w, port, t.to_owned()))
            .collect();
        self.zone.lock().unwrap().srv.insert(key(name), records);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = Some(mode);
    }

    pub fn queries(&self) -> usize {
        self.zone.lock().unwrap().queries
    }
}

async fn serve(sock: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(req) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let rsp = answer(&req, &zone);
        let _ = sock.send_to(&rsp.to_vec().unwrap(), peer).await;
    }
}

fn answer(req: &Message, zone: &Mutex<Zone>) -> Message {
    let mut zone = zone.lock().unwrap();
    zone.queries += 1;
    let mut rsp = Message::response(req.metadata.id, req.metadata.op_code);
    rsp.metadata.message_type = MessageType::Response;
    rsp.metadata.authoritative = true;
    rsp.metadata.recursion_desired = req.metadata.recursion_desired;
    rsp.metadata.recursion_available = true;
    rsp.add_queries(req.queries.clone());
    match zone.mode.unwrap_or(Mode::Normal) {
        Mode::ServFail => {
            rsp.metadata.response_code = ResponseCode::ServFail;
            return rsp;
        }
        Mode::Empty => return rsp,
        Mode::Normal => {}
    }
    let ttl = zone.ttl;
    let mut found = false;
    for q in &req.queries {
        let name = q.name().clone();
        let k = key(&name.to_string());
        match q.query_type() {
            RecordType::A | RecordType::AAAA => {
                if let Some(ips) = zone.hosts.get(&k) {
                    found = true;
                    for ip in ips {
                        let data = match (ip, q.query_type()) {
                            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                            _ => continue,
                        };
                        rsp.add_answer(Record::from_rdata(name.clone(), ttl, data));
                    }
                }
            }
            RecordType::SRV => {
                if let Some(records) = zone.srv.get(&k) {
                    found = true;
                    for (p, w, port, target) in records {
                        let target = Name::from_ascii(target).unwrap();
                        let data = RData::SRV(SRV::new(*p, *w, *port, target));
                        rsp.add_answer(Record::from_rdata(name.clone(), ttl, data));
                    }
                }
            }
            _ => {}
        }
    }
    if !found {
        rsp.metadata.response_code = ResponseCode::NXDomain;
    }
    rsp
}
