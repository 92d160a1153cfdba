//! The NATS topologies HarmonyLite is deployed on, under faults, with real nats-server
//! processes and the real binary: a three-server JetStream cluster losing a server mid-stream,
//! and the field topology (hub with JetStream, leaf without it, gateways on the leaf) with its
//! leaf-to-hub link cut and healed through the fault-injecting proxy.
#![allow(deprecated)] // the `nats` crate 0.26 marks itself deprecated

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const CONVERGE: Duration = WORKLOAD_CONVERGE;

/// Three nats-servers in a cluster (routes on loopback, JetStream with unique server names), a
/// stream with `replicas = 3`, each node given all three URLs. The stream leader is killed with
/// -9 while the apps write: replication goes on through the other two (a row written after the
/// kill reaches the other node), and when the server returns everything converges.
#[test]
fn three_server_cluster_keeps_replicating_when_one_server_is_lost() {
    let dir = TestDir::new("cluster3");
    let ports = free_ports::<9>();
    let (client, mon, route) = (&ports[0..3], &ports[3..6], &ports[6..9]);
    let routes = route
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers: Vec<NatsServer> = (0..3)
        .map(|i| {
            let name = format!("s{}", i + 1);
            let args: Vec<String> = [
                "-n",
                &name,
                "--cluster_name",
                "hl",
                "--cluster",
                &format!("nats://127.0.0.1:{}", route[i]),
                "--routes",
                &routes,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            NatsServer::start_custom(dir.path(), &name, client[i], mon[i], true, &args)
        })
        .collect();
    for s in &servers {
        s.wait_meta_leader(Duration::from_secs(30));
    }
    let urls: Vec<String> = servers.iter().map(|s| toml_str(&s.url())).collect();
    let names = ["n1", "n2", "n3"];
    let dbs = make_dbs(dir.path(), &names);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let mut nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            // Each node lists the servers in another order.
            let mut u = urls.clone();
            u.rotate_left(i);
            let toml = format!(
                "[replication_log]\nreplicas = 3\n[nats]\nurls = [{}]\n",
                u.join(", ")
            );
            Node::start(dir.path(), n, &toml, None)
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
        n.wait_connected();
    }
    // Test premise: the stream is replicated on all three servers.
    let stream_info = || {
        let nc = nats::connect(servers[0].url()).expect("connect to s1");
        nats::jetstream::new(nc)
            .stream_info("HLRS")
            .expect("stream info of HLRS")
    };
    let info = stream_info();
    assert_eq!(info.config.num_replicas, 3, "{info:?}");
    let replicas = info.cluster.replicas.len();
    assert_eq!(replicas, 2, "a leader and two replicas expected: {info:?}");
    let mut w1 = Writer::start(dbs[0], "n1", 0, 3, i64::MAX, Duration::from_millis(30));
    let mut w2 = Writer::start(
        dbs[1],
        "n2",
        1_000_000,
        2,
        i64::MAX,
        Duration::from_millis(50),
    );
    wait_until("n3 receives rows", CONVERGE, || count(dbs[2], "t") > 20);

    // The stream's leader goes: the stream must elect another one mid-stream.
    let leader = stream_info().cluster.leader.expect("HLRS has a leader");
    let victim = ["s1", "s2", "s3"]
        .iter()
        .position(|n| *n == leader)
        .unwrap_or_else(|| panic!("stream leader {leader:?} is none of s1, s2, s3"));
    eprintln!("kill -9 of the stream leader {leader}");
    servers[victim].kill9();
    let survivor = (victim + 1) % 3;
    servers[survivor].wait_meta_leader(Duration::from_secs(30));
    // Replication goes on with two of three servers.
    app(dbs[0], "INSERT INTO t VALUES (-1, 'after the kill', 0)");
    for db in &dbs[1..] {
        wait_query(
            db,
            "SELECT origin FROM t WHERE id = -1",
            "text='after the kill'",
            CONVERGE,
        );
    }
    let before = count(dbs[2], "t");
    wait_until("n3 keeps receiving with a server down", CONVERGE, || {
        count(dbs[2], "t") > before + 20
    });
    eprintln!("server {} returns", victim + 1);
    servers[victim].start_again();
    servers[victim].wait_meta_leader(Duration::from_secs(30));
    let before = count(dbs[2], "t");
    wait_until(
        "n3 keeps receiving after the server returned",
        CONVERGE,
        || count(dbs[2], "t") > before + 20,
    );
    let (c1, c2) = (w1.stop(), w2.stop());
    let extra = [(-1, "integer=-1|text='after the kill'|integer=0".to_string())];
    let (t, c) = expected(&[(&w1, c1), (&w2, c2)], &extra);
    assert_exactly(&dbs, &t, &c);
    assert_no_panic(&nodes);
}

// ---------------------------------------------------------------------------------------------
// Leaf topology

/// `/leafz` count of leaf connections of a server.
fn leaf_connections(s: &NatsServer) -> Option<u64> {
    let body = s.monitor("/leafz")?;
    let key = "\"leafnodes\":";
    let rest = body[body.find(key)? + key.len()..].trim_start();
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The topology field gateways use: a hub nats-server with JetStream (domain `hub`) and a
/// leafnode listener; a leaf nats-server without JetStream whose `default_js_domain` sends the
/// JetStream API of its clients to the hub, connected to the hub through a fault-injecting
/// proxy. Hub nodes (`h*`) use the hub; gateway nodes (`g*`) use the leaf.
struct HubAndLeaf {
    hub: NatsServer,
    link: Proxy,
    leaf: NatsServer,
}

/// How the leaf sends its clients' JetStream API to the hub's domain.
#[derive(Clone, Copy, Debug)]
enum LeafJs {
    /// `default_js_domain: { "$G": "hub" }` (deprecated in nats-server 2.15; it also maps
    /// `$KV.>` and `$OBJ.>` to the domain).
    DefaultDomain,
    /// `mappings = { "$JS.API.>": "$JS.hub.API.>" }`, what `boards/install.sh --with-leaf`
    /// writes (`boards/leaf.conf.in`): only the API is mapped.
    Mapping,
}

impl HubAndLeaf {
    fn start(dir: &TestDir) -> HubAndLeaf {
        HubAndLeaf::start_with(dir, LeafJs::DefaultDomain)
    }

    fn start_with(dir: &TestDir, js: LeafJs) -> HubAndLeaf {
        let js_to_hub = match js {
            LeafJs::DefaultDomain => "default_js_domain: { \"$G\": \"hub\" }",
            LeafJs::Mapping => "mappings = { \"$JS.API.>\": \"$JS.hub.API.>\" }",
        };
        let [hub_port, hub_mon, hub_leaf_port, leaf_port, leaf_mon] = free_ports::<5>();
        let hub_conf = dir.join("hub.conf");
        std::fs::write(
            &hub_conf,
            format!(
                "server_name: hub\n\
                 jetstream {{ store_dir: {}, domain: hub }}\n\
                 # no_advertise: the leaf must reach the hub only through the proxy, not at the\n\
                 # listen address the hub would otherwise advertise to it\n\
                 leafnodes {{ listen: \"127.0.0.1:{hub_leaf_port}\", no_advertise: true }}\n",
                toml_str(&dir.join("hub-store").display().to_string())
            ),
        )
        .unwrap();
        let hub = NatsServer::start_custom(
            dir.path(),
            "hub",
            hub_port,
            hub_mon,
            false,
            &["-c".to_string(), hub_conf.display().to_string()],
        );
        let link = Proxy::start(loopback(hub_leaf_port));
        let leaf_conf = dir.join("leaf.conf");
        std::fs::write(
            &leaf_conf,
            format!(
                "server_name: leaf\n\
                 # no JetStream here: the JetStream API of this server's clients goes to the hub\n\
                 {js_to_hub}\n\
                 leafnodes {{ remotes = [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ] }}\n",
                link.port()
            ),
        )
        .unwrap();
        let leaf = NatsServer::start_custom(
            dir.path(),
            "leaf",
            leaf_port,
            leaf_mon,
            false,
            &["-c".to_string(), leaf_conf.display().to_string()],
        );
        let t = HubAndLeaf { hub, link, leaf };
        t.leaf_up(1);
        t
    }

    /// Waits until the leaf reports `want` leafnode connections.
    fn leaf_up(&self, want: u64) {
        wait_until_or(
            &format!("the leaf reports {want} leafnode connection(s)"),
            CONVERGE,
            || leaf_connections(&self.leaf) == Some(want),
            || self.leaf.log(),
        );
    }

    /// The server a node connects to: the hub for `h*`, the leaf for gateways (`g*`).
    fn url_for(&self, name: &str) -> String {
        if name.starts_with('h') {
            self.hub.url()
        } else {
            self.leaf.url()
        }
    }
}

/// Writes replicate every way; then the link is cut (reset, later blackholed): every app keeps
/// writing, rows written on the hub side reach the other hub node during the cut, and after the
/// link heals all four converge.
#[test]
fn leaf_topology_keeps_both_sides_writing_through_a_cut_link() {
    let dir = TestDir::new("leaf");
    let t = HubAndLeaf::start(&dir);
    let (link, leaf_up) = (&t.link, |want| t.leaf_up(want));

    let names = ["h1", "h2", "g1", "g2"];
    let dbs = make_dbs(dir.path(), &names);
    let dbs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::start(dir.path(), n, "", Some(&t.url_for(n))))
        .collect();
    for n in &mut nodes {
        n.wait_ready();
        n.wait_connected();
    }
    let mut done: Vec<(Writer, i64)> = Vec::new();
    // Every app writes `txs` transactions, `pace` apart, all at the same time.
    let write_all = |round: i64, txs: i64, pace: Duration, done: &mut Vec<(Writer, i64)>| {
        let mut ws: Vec<Writer> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let first = (i as i64) * 1_000_000 + round * 10_000;
                Writer::start(dbs[i], &format!("{name}-r{round}"), first, 3, txs, pace)
            })
            .collect();
        for mut w in ws.drain(..) {
            let n = w.join();
            assert_eq!(n, txs);
            done.push((w, n));
        }
    };
    let check = |done: &Vec<(Writer, i64)>, dbs: &[&Path]| {
        let refs: Vec<(&Writer, i64)> = done.iter().map(|(w, n)| (w, *n)).collect();
        let (t, c) = expected(&refs, &[]);
        assert_exactly(dbs, &t, &c);
    };

    // Linked: everything replicates.
    write_all(0, 5, Duration::from_millis(20), &mut done);
    check(&done, &dbs);

    // Cut by reset, then by blackhole: every app writes; the hub side keeps replicating.
    for (round, how) in [(1, "reset"), (2, "blackhole")] {
        eprintln!("cut the leaf-hub link: {how}");
        match how {
            "reset" => link.reset(),
            _ => link.blackhole(),
        }
        if how == "reset" {
            leaf_up(0);
        }
        let from = done.len();
        // 30 transactions 400 ms apart: the cut lasts longer than the publish ack deadline.
        let cut = Instant::now();
        write_all(round, 30, Duration::from_millis(400), &mut done);
        eprintln!("the apps wrote for {:?} during the cut", cut.elapsed());
        let hub_side: Vec<(&Writer, i64)> = done[..]
            .iter()
            .enumerate()
            .filter(|(i, (w, _))| *i < from || w.origin.starts_with('h'))
            .map(|(_, (w, n))| (w, *n))
            .collect();
        let (t, c) = expected(&hub_side, &[]);
        assert_exactly(&dbs[..2], &t, &c);
        for db in &dbs[..2] {
            assert_eq!(
                query_one(
                    db,
                    &format!("SELECT count(*) FROM t WHERE origin LIKE 'g%-r{round}'")
                )
                .unwrap(),
                "integer=0",
                "gateway rows crossed a cut link (test premise)"
            );
        }
        for n in &mut nodes {
            assert!(
                n.is_running(),
                "{} exited during the cut:\n{}",
                n.name,
                n.log()
            );
        }
        eprintln!("heal the leaf-hub link");
        link.pass();
        leaf_up(1);
        check(&done, &dbs);
    }
    for n in &nodes[2..] {
        assert_no_log_storm(&n.name, &n.log(), 20);
    }
    assert_no_panic(&nodes);
}

fn tombstones(db: &Path) -> i64 {
    query_one(db, "SELECT count(*) FROM __hl_ver_t WHERE del = 1")
        .map_or(-1, |v| v.trim_start_matches("integer=").parse().unwrap())
}

/// Tombstone collection needs a record of every publishing node in the node registry on the
/// hub; gateway nodes write and read theirs through the leaf. Rows inserted and deleted by a
/// gateway app and by a hub app leave no tombstone on any of the four nodes.
#[test]
fn leaf_topology_collects_tombstones_on_every_node() {
    collects_tombstones_through_the_leaf(LeafJs::Mapping);
}

/// The same with the leaf's deprecated `default_js_domain`.
#[test]
fn leaf_topology_with_default_js_domain_collects_tombstones_on_every_node() {
    collects_tombstones_through_the_leaf(LeafJs::DefaultDomain);
}

fn collects_tombstones_through_the_leaf(js: LeafJs) {
    let dir = TestDir::new("leaf-tomb");
    let t = HubAndLeaf::start_with(&dir, js);
    let names = ["h1", "h2", "g1", "g2"];
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";
    let extra = "[replication_log]\nhorizon_interval_ms = 300\n";
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| {
            app(&dir.path().join(format!("{n}.db")), schema);
            Node::start(dir.path(), n, extra, Some(&t.url_for(n)))
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
        n.wait_connected();
    }
    let dbs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    let refs: Vec<&Path> = dbs.iter().map(PathBuf::as_path).collect();
    let (h1, g1) = (refs[0], refs[2]);
    app(
        g1,
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100)
         INSERT INTO t SELECT i, 'gateway ' || i FROM s;",
    );
    app(
        h1,
        "WITH RECURSIVE s(i) AS (SELECT 1001 UNION ALL SELECT i + 1 FROM s WHERE i < 1100)
         INSERT INTO t SELECT i, 'hub ' || i FROM s;",
    );
    wait_until_or(
        "every row everywhere",
        CONVERGE,
        || refs.iter().all(|d| count(d, "t") == 200),
        || {
            refs.iter()
                .map(|d| format!("{}: {} rows", d.display(), count(d, "t")))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    app(g1, "DELETE FROM t WHERE id <= 60;");
    app(h1, "DELETE FROM t WHERE id > 1040;");
    wait_converged(&refs, &["t"], CONVERGE);
    wait_until_or(
        "the 120 tombstones collected on every node",
        CONVERGE,
        || refs.iter().all(|d| tombstones(d) == 0),
        || {
            nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}: {} tombstones\n{}",
                        n.name,
                        tombstones(&n.db),
                        n.log()
                            .lines()
                            .filter(|l| l.contains("record") || l.contains("tombstone"))
                            .take(10)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    for n in &nodes {
        assert_eq!(count(&n.db, "t"), 80, "{}", n.name);
        let log = n.log();
        assert!(
            !log.contains("node record out of reach") && !log.contains("keeps no node record"),
            "{}:\n{log}",
            n.name
        );
    }
    assert_no_panic(&nodes);
}

/// Snapshots behind the leaf: a gateway saves one (its object chunks, pointer and upload
/// lease go to the hub's JetStream through the leaf), and a new gateway without a database
/// starts from it.
#[test]
fn leaf_topology_gateway_saves_a_snapshot_and_a_new_gateway_restores_it() {
    let dir = TestDir::new("leaf-snap");
    let t = HubAndLeaf::start_with(&dir, LeafJs::Mapping);
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";
    let mut nodes: Vec<Node> = ["h1", "g1"]
        .iter()
        .map(|n| {
            app(&dir.path().join(format!("{n}.db")), schema);
            Node::start(dir.path(), n, "", Some(&t.url_for(n)))
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready();
        n.wait_connected();
    }
    let refs: Vec<PathBuf> = nodes.iter().map(|n| n.db.clone()).collect();
    app(
        &refs[1],
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
         INSERT INTO t SELECT i, 'gateway ' || i FROM s;",
    );
    wait_converged(&[&refs[0], &refs[1]], &["t"], CONVERGE);
    let out = run_bin(
        &[
            "snapshot",
            "save",
            "--config",
            nodes[1].config.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("saved snapshot"),
        "snapshot save on the gateway failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let g2_db = dir.join("g2.db");
    let mut g2 = Node::start(dir.path(), "g2", "", Some(&t.url_for("g2")));
    g2.wait_log("database created from snap-", Duration::from_secs(30));
    g2.wait_ready();
    wait_converged(&[&refs[0], &refs[1], &g2_db], &["t"], CONVERGE);
    assert_eq!(count(&g2_db, "t"), 50);
    nodes.push(g2);
    assert_no_panic(&nodes);
}
