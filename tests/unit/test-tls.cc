// Unit tests for util/tls.h and CoSocket::co_start_tls: credentials made
// here with certtool/psktool, a socketpair with a server and a client
// coroutine, data both ways, the certificate and PSK checks, authz, the
// object table and --object parsing, and gnutls-serv as a real peer.
#include <arpa/inet.h>
#include <fcntl.h>
#include <glib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qapi/tls-object.h"
#include "tests/unit/tmpdir.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine.h"
#include "util/tls.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;
using bgtest::tmp_path;

namespace {

// The credential directories, made once by make_creds() (an unchecked
// fixture: it runs in the parent before the forked tests):
//   good/     CA 1, its server (localhost, 127.0.0.1) and client certificates
//   nocert/   CA 1 only (a client without a certificate)
//   other/    CA 2 with its own server and client certificates
//   mixed/    CA 2's ca-cert.pem with CA 1's server certificate (broken)
//   psk/      keys.psk: alice and qemu;  psk-bad/: alice with another key
const char kMakeCreds[] = R"SH(
set -e
cd "$1"
mk_ca() {  # dir cn
    printf 'cn = "%s"\nca\ncert_signing_key\nexpiration_days = 2\n' "$2" > "$1/ca.info"
    certtool --generate-privkey --key-type=ecdsa > "$1/ca-key.pem" 2>/dev/null
    certtool --generate-self-signed --load-privkey "$1/ca-key.pem" --template "$1/ca.info" \
        --outfile "$1/ca-cert.pem" 2>/dev/null
}
mk_cert() {  # dir kind(server|client) cn
    { printf 'organization = Test\ncn = "%s"\nexpiration_days = 2\nencryption_key\nsigning_key\n' "$3"
      if [ "$2" = server ]; then printf 'dns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n'
      else printf 'tls_www_client\n'; fi; } > "$1/$2.info"
    certtool --generate-privkey --key-type=ecdsa > "$1/$2-key.pem" 2>/dev/null
    certtool --generate-certificate --load-ca-certificate "$1/ca-cert.pem" --load-ca-privkey "$1/ca-key.pem" \
        --load-privkey "$1/$2-key.pem" --template "$1/$2.info" --outfile "$1/$2-cert.pem" 2>/dev/null
}
mkdir good nocert other mixed psk psk-bad
mk_ca good "Test CA"; mk_cert good server localhost; mk_cert good client "Test Client"
cp good/ca-cert.pem nocert/
mk_ca other "Other CA"; mk_cert other server localhost; mk_cert other client "Other Client"
cp other/ca-cert.pem mixed/; cp good/server-cert.pem good/server-key.pem mixed/
psktool -u alice -p psk/keys.psk >/dev/null
psktool -u qemu -p psk/keys.psk >/dev/null
psktool -u alice -p psk-bad/keys.psk >/dev/null
)SH";

void make_creds()
{
    bgtest::make_tmpdir();
    const std::string script = tmp_path("make-creds.sh");
    FILE *f = std::fopen(script.c_str(), "w");
    if (!f || std::fputs(kMakeCreds, f) < 0 || std::fclose(f) != 0) std::abort();
    const std::string cmd = "bash " + script + " " + bgtest::g_dir;
    if (std::system(cmd.c_str()) != 0) {
        std::fprintf(stderr, "test-tls: making the credentials failed\n");
        std::abort();
    }
}

std::string dir(const char *name) { return tmp_path(name); }

std::shared_ptr<TlsCreds> creds(const std::string &d, bool server, bool psk = false, bool verify = true,
                                const std::string &user = "")
{
    TlsCredsOptions o;
    o.kind = psk ? TlsCredsOptions::Kind::kPsk : TlsCredsOptions::Kind::kX509;
    o.id = server ? "srv" : "cli";
    o.dir = d;
    o.server = server;
    o.verify_peer = verify;
    o.username = user;
    auto r = TlsCreds::create(o);
    ck_assert_msg(r.ok(), "creating %s: %s", d.c_str(), r.ok() ? "" : r.msg().c_str());
    return r.value();
}

std::string create_error(const TlsCredsOptions &o)
{
    auto r = TlsCreds::create(o);
    ck_assert_msg(!r.ok(), "creating credentials from %s succeeded", o.dir.c_str());
    return r.msg();
}

bool run_until(AioContext *ctx, const std::function<bool()> &done, int64_t timeout_ns = 20000000000LL)
{
    int64_t deadline = clock_ns() + timeout_ns;
    while (!done()) {
        if (clock_ns() > deadline) return false;
        if (!ctx->iterate(false)) g_usleep(100);
    }
    return true;
}

std::vector<uint8_t> pattern(size_t n, uint32_t seed)
{
    std::vector<uint8_t> v(n);
    uint32_t x = seed;
    for (auto &b : v) {
        x = x * 1103515245u + 12345u;
        b = static_cast<uint8_t>(x >> 16);
    }
    return v;
}

// The two ends of one connection and the outcome of their handshakes.
struct Pair {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    std::unique_ptr<CoSocket> srv, cli;
    Status srv_st, cli_st;
    bool srv_done = false, cli_done = false;

    Pair()
    {
        int sv[2];
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        srv = std::make_unique<CoSocket>(sv[0]);
        cli = std::make_unique<CoSocket>(sv[1]);
    }

    // Runs both handshakes to their end (either may fail; a failing side
    // shuts its socket down so that the other one does not wait forever).
    void handshake(const TlsCreds &sc, const TlsCreds &cc, const std::string &hostname = "localhost",
                   const std::string &authz = "")
    {
        Coroutine *s = coroutine_create_fn([&] {
            srv_st = srv->co_start_tls(sc, true, "", authz);
            if (!srv_st.ok()) srv->shutdown();
            srv_done = true;
        });
        Coroutine *c = coroutine_create_fn([&] {
            cli_st = cli->co_start_tls(cc, false, hostname);
            if (!cli_st.ok()) cli->shutdown();
            cli_done = true;
        });
        coroutine_enter(s);
        coroutine_enter(c);
        ck_assert_msg(run_until(ctx.get(), [&] { return srv_done && cli_done; }), "handshake hangs");
    }
};

// Sends data from one end to the other (the writer gives everything in
// one co_write_full; the reader takes it in uneven pieces), concurrently
// with the same in the other direction.
void exchange(Pair &p, size_t n)
{
    const auto up = pattern(n, 1), down = pattern(n, 2);
    std::vector<uint8_t> got_up(n), got_down(n);
    int done = 0;
    int rc[4] = {1, 1, 1, 1};
    auto reader = [&](CoSocket *s, std::vector<uint8_t> *buf, int *r) {
        static const size_t pieces[] = {1, 7, 100, 4096, 65536, 16383, 333333};
        size_t off = 0, i = 0;
        *r = 0;
        while (off < buf->size() && *r == 0) {
            size_t len = std::min(pieces[i++ % 7], buf->size() - off);
            *r = s->co_read_full(buf->data() + off, len);
            off += len;
        }
        done++;
    };
    auto writer = [&](CoSocket *s, const std::vector<uint8_t> *buf, int *r) {
        *r = s->co_write_full(buf->data(), buf->size());
        done++;
    };
    Coroutine *cos[] = {
        coroutine_create_fn([&] { writer(p.cli.get(), &up, &rc[0]); }),
        coroutine_create_fn([&] { reader(p.srv.get(), &got_up, &rc[1]); }),
        coroutine_create_fn([&] { writer(p.srv.get(), &down, &rc[2]); }),
        coroutine_create_fn([&] { reader(p.cli.get(), &got_down, &rc[3]); }),
    };
    for (Coroutine *co : cos) coroutine_enter(co);
    ck_assert_msg(run_until(p.ctx.get(), [&] { return done == 4; }), "the exchange hangs");
    for (int r : rc) ck_assert_int_eq(r, 0);
    ck_assert_msg(got_up == up, "client-to-server data differs");
    ck_assert_msg(got_down == down, "server-to-client data differs");
}

bool contains(const std::string &s, const std::string &part) { return s.find(part) != std::string::npos; }

// Compares two strings (no dangling c_str() of temporaries).
#define EXPECT_STR(a, b)                                                                  \
    do {                                                                                  \
        const std::string a_ = (a), b_ = (b);                                             \
        ck_assert_msg(a_ == b_, "got '%s', want '%s'", a_.c_str(), b_.c_str());           \
    } while (0)

} // namespace

// ---------------------------------------------------------------- x509

START_TEST(test_x509_exchange)
{
    Pair p;
    auto sc = creds(dir("good"), true), cc = creds(dir("good"), false);
    p.handshake(*sc, *cc);
    ck_assert_msg(p.srv_st.ok(), "server: %s", p.srv_st.ok() ? "" : p.srv_st.msg().c_str());
    ck_assert_msg(p.cli_st.ok(), "client: %s", p.cli_st.ok() ? "" : p.cli_st.msg().c_str());
    ck_assert(p.srv->tls_active() && p.cli->tls_active());
    // The server sees the client's DN, the client the server's.
    ck_assert_msg(contains(p.srv->tls_peer_identity(), "CN=Test Client"), "%s", p.srv->tls_peer_identity().c_str());
    ck_assert_msg(contains(p.cli->tls_peer_identity(), "CN=localhost"), "%s", p.cli->tls_peer_identity().c_str());
    exchange(p, 3 * 1024 * 1024 + 17);
    exchange(p, 1);
}
END_TEST

// Many small iovecs gathered into records, and a clean end seen by the
// reader as EOF.
START_TEST(test_x509_iovecs_and_eof)
{
    Pair p;
    auto sc = creds(dir("good"), true), cc = creds(dir("good"), false);
    p.handshake(*sc, *cc);
    ck_assert(p.srv_st.ok() && p.cli_st.ok());
    const auto data = pattern(200000, 3);
    std::vector<struct iovec> iov;
    for (size_t off = 0, n = 1; off < data.size(); off += n, n = n * 3 % 5000 + 1) {
        n = std::min(n, data.size() - off);
        iov.push_back({const_cast<uint8_t *>(data.data() + off), n});
    }
    std::vector<uint8_t> got(data.size());
    int wr = 1, rd = 1, rd2 = 1;
    bool eof = false, done = false;
    coroutine_enter(coroutine_create_fn([&] {
        wr = p.cli->co_write_full(iov.data(), static_cast<int>(iov.size()));
        p.cli.reset();   // closes without a TLS goodbye
    }));
    coroutine_enter(coroutine_create_fn([&] {
        rd = p.srv->co_read_full(got.data(), got.size());
        uint8_t b;
        rd2 = p.srv->co_read_full(&b, 1, &eof);
        done = true;
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return done; }));
    ck_assert_int_eq(wr, 0);
    ck_assert_int_eq(rd, 0);
    ck_assert_msg(got == data, "data differs");
    ck_assert_int_eq(rd2, -ECONNRESET);
    ck_assert(eof);
}
END_TEST

START_TEST(test_x509_wrong_ca)
{
    // The client trusts CA 2 only; the server's certificate is CA 1's.
    Pair p;
    auto sc = creds(dir("good"), true, false, false), cc = creds(dir("other"), false);
    p.handshake(*sc, *cc);
    ck_assert(!p.cli_st.ok());
    EXPECT_STR(p.cli_st.msg(), "The certificate hasn't got a known issuer");
    ck_assert(!p.cli->tls_active());
}
END_TEST

START_TEST(test_x509_client_cert_from_other_ca)
{
    Pair p;
    auto sc = creds(dir("good"), true);
    TlsCredsOptions o;
    o.dir = dir("other");
    o.verify_peer = false;   // the client does not check; the server does
    auto cc = TlsCreds::create(o);
    ck_assert(cc.ok());
    p.handshake(*sc, *cc.value());
    ck_assert(!p.srv_st.ok());
    // The server names its CA in its certificate request: a client whose
    // certificate another CA signed sends none.
    EXPECT_STR(p.srv_st.msg(), "Verify failed: No certificate was found.");
}
END_TEST

START_TEST(test_x509_verify_peer_needs_client_cert)
{
    Pair p;
    auto sc = creds(dir("good"), true), cc = creds(dir("nocert"), false);
    p.handshake(*sc, *cc);
    ck_assert(!p.srv_st.ok());
    ck_assert_msg(contains(p.srv_st.msg(), "Verify failed:") || contains(p.srv_st.msg(), "certificate"), "%s",
                  p.srv_st.msg().c_str());

    // Without verify-peer on the server the same client is served.
    Pair q;
    auto sc2 = creds(dir("good"), true, false, false);
    q.handshake(*sc2, *cc);
    ck_assert_msg(q.srv_st.ok() && q.cli_st.ok(), "%s", q.srv_st.ok() ? "client" : q.srv_st.msg().c_str());
    EXPECT_STR(q.srv->tls_peer_identity(), "");
    exchange(q, 100000);
}
END_TEST

START_TEST(test_x509_hostname)
{
    auto sc = creds(dir("good"), true), cc = creds(dir("good"), false);
    {
        Pair p;
        p.handshake(*sc, *cc, "otherhost");
        ck_assert(!p.cli_st.ok());
        EXPECT_STR(p.cli_st.msg(), "Certificate does not match the hostname otherhost");
    }
    {
        Pair p;   // the certificate carries the address too
        p.handshake(*sc, *cc, "127.0.0.1");
        ck_assert_msg(p.cli_st.ok(), "%s", p.cli_st.ok() ? "" : p.cli_st.msg().c_str());
    }
    {
        Pair p;   // no name: the chain is checked, the name is not
        p.handshake(*sc, *cc, "");
        ck_assert(p.cli_st.ok() && p.srv_st.ok());
    }
}
END_TEST

START_TEST(test_x509_authz)
{
    auto sc = creds(dir("good"), true), cc = creds(dir("good"), false);
    std::string dn;
    {
        Pair p;
        p.handshake(*sc, *cc);
        ck_assert(p.srv_st.ok());
        dn = p.srv->tls_peer_identity();
    }
    ck_assert(authz_add({"allow", dn}).ok());
    ck_assert(authz_add({"deny", "CN=Somebody Else,O=Test"}).ok());
    {
        Pair p;
        p.handshake(*sc, *cc, "localhost", "allow");
        ck_assert(p.srv_st.ok());
        exchange(p, 5000);
    }
    {
        Pair p;
        p.handshake(*sc, *cc, "localhost", "deny");
        ck_assert(!p.srv_st.ok());
        EXPECT_STR(p.srv_st.msg(), ("TLS x509 authz check for " + dn + " is denied"));
    }
    {
        Pair p;
        p.handshake(*sc, *cc, "localhost", "nosuch");
        ck_assert(!p.srv_st.ok());
        EXPECT_STR(p.srv_st.msg(), "Cannot find QAuthZ object ID nosuch");
    }
}
END_TEST

// A peer that never answers: the handshake ends at the read deadline; one
// that goes away: it ends at once.
START_TEST(test_handshake_deadline)
{
    auto sc = creds(dir("good"), true);
    Pair p;
    Status st;
    bool done = false;
    int64_t start = clock_ns();
    p.srv->set_read_deadline(start + 200000000LL);
    coroutine_enter(coroutine_create_fn([&] {
        st = p.srv->co_start_tls(*sc, true);
        done = true;
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return done; }, 5000000000LL));
    ck_assert(clock_ns() - start >= 200000000LL);
    EXPECT_STR(st.msg(), "TLS handshake failed: Connection timed out");
    ck_assert(!p.srv->tls_active());

    Pair q;
    done = false;
    coroutine_enter(coroutine_create_fn([&] {
        st = q.srv->co_start_tls(*sc, true);
        done = true;
    }));
    q.cli.reset();
    ck_assert(run_until(q.ctx.get(), [&] { return done; }, 5000000000LL));
    ck_assert_msg(!st.ok() && contains(st.msg(), "TLS handshake failed: "), "%s", st.ok() ? "ok" : st.msg().c_str());
}
END_TEST

// No TLS before 1.2 by default; a priority string given is used as it is.
START_TEST(test_priority)
{
    auto sc = creds(dir("good"), true);
    TlsCredsOptions o;
    o.dir = dir("good");
    o.priority = "NORMAL:-VERS-ALL:+VERS-TLS1.1";
    auto old = TlsCreds::create(o);
    ck_assert(old.ok());
    Pair p;
    p.handshake(*sc, *old.value());
    ck_assert(!p.srv_st.ok() && !p.cli_st.ok());
    ck_assert_msg(contains(p.cli_st.msg(), "TLS handshake failed: "), "%s", p.cli_st.msg().c_str());
    o.priority = "NORMAL:-VERS-ALL:+VERS-TLS1.2";
    auto v12 = TlsCreds::create(o);
    ck_assert(v12.ok());
    Pair q;
    q.handshake(*sc, *v12.value());
    ck_assert_msg(q.srv_st.ok() && q.cli_st.ok(), "%s", q.srv_st.ok() ? q.cli_st.msg().c_str() : q.srv_st.msg().c_str());
    exchange(q, 70000);
}
END_TEST

START_TEST(test_endpoint_mismatch)
{
    Pair p;
    auto cc = creds(dir("good"), false);
    Status st;
    bool done = false;
    coroutine_enter(coroutine_create_fn([&] {
        st = p.srv->co_start_tls(*cc, true);
        done = true;
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return done; }));
    ck_assert(!st.ok());
    EXPECT_STR(st.msg(), "Credentials endpoint doesn't match session");
}
END_TEST

// ---------------------------------------------------------------- PSK

START_TEST(test_psk)
{
    auto sc = creds(dir("psk"), true, true);
    {
        Pair p;
        auto cc = creds(dir("psk"), false, true, true, "alice");
        p.handshake(*sc, *cc);
        ck_assert_msg(p.srv_st.ok() && p.cli_st.ok(), "%s", p.srv_st.ok() ? p.cli_st.msg().c_str() : p.srv_st.msg().c_str());
        EXPECT_STR(p.srv->tls_peer_identity(), "alice");
        exchange(p, 1000000);
    }
    {
        Pair p;   // default username
        auto cc = creds(dir("psk"), false, true);
        p.handshake(*sc, *cc);
        ck_assert(p.srv_st.ok() && p.cli_st.ok());
        EXPECT_STR(p.srv->tls_peer_identity(), "qemu");
        ck_assert(authz_add({"only-alice", "alice"}).ok());
        Pair q;
        q.handshake(*sc, *cc, "", "only-alice");
        ck_assert(!q.srv_st.ok());
        EXPECT_STR(q.srv_st.msg(), "TLS PSK authz check for qemu is denied");
    }
    {
        Pair p;   // the wrong key
        auto cc = creds(dir("psk-bad"), false, true, true, "alice");
        p.handshake(*sc, *cc);
        ck_assert(!p.srv_st.ok() && !p.cli_st.ok());
        ck_assert_msg(contains(p.srv_st.msg(), "TLS handshake failed: "), "%s", p.srv_st.msg().c_str());
        ck_assert_msg(contains(p.cli_st.msg(), "TLS handshake failed: "), "%s", p.cli_st.msg().c_str());
    }
}
END_TEST

// ---------------------------------------------------------------- loading

START_TEST(test_create_errors)
{
    TlsCredsOptions o;
    o.id = "t";
    ck_assert(!o.server);   // endpoint=client by default, as in QEMU
    o.server = true;
    EXPECT_STR(create_error(o), "Missing 'dir' property value");
    o.dir = "/nonexistent";
    EXPECT_STR(create_error(o), "Unable to access credentials /nonexistent/ca-cert.pem: No such file or directory");
    o.dir = dir("nocert");   // a server needs its certificate
    EXPECT_STR(create_error(o), ("Unable to access credentials " + dir("nocert") + "/server-cert.pem: No such file or directory"));
    o.dir = dir("mixed");
    EXPECT_STR(create_error(o), ("Our own certificate " + dir("mixed") + "/server-cert.pem failed validation against " +
                      dir("mixed") + "/ca-cert.pem: The certificate hasn't got a known issuer"));
    o.server = false;   // a client needs only the CA
    o.dir = dir("nocert");
    ck_assert(TlsCreds::create(o).ok());

    o.kind = TlsCredsOptions::Kind::kPsk;
    o.dir = dir("good");
    EXPECT_STR(create_error(o), ("Unable to access credentials " + dir("good") + "/keys.psk: No such file or directory"));
    o.dir = dir("psk");
    o.username = "bob";
    EXPECT_STR(create_error(o), ("Username bob not found in PSK file " + dir("psk") + "/keys.psk"));
    o.server = true;
    EXPECT_STR(create_error(o), "username should not be set when endpoint=server");
    o.kind = TlsCredsOptions::Kind::kX509;
    o.username.clear();
    o.dir = dir("good");
    o.priority = "NOSUCHPRIORITY";
    auto c = TlsCreds::create(o);
    ck_assert(c.ok());
    Pair p;
    Status st;
    bool done = false;
    coroutine_enter(coroutine_create_fn([&] {
        st = p.srv->co_start_tls(*c.value(), true);
        done = true;
    }));
    ck_assert(run_until(p.ctx.get(), [&] { return done; }));
    ck_assert_msg(!st.ok() && contains(st.msg(), "Cannot set default TLS session priority NOSUCHPRIORITY: "), "%s",
                  st.ok() ? "ok" : st.msg().c_str());
}
END_TEST

// ---------------------------------------------------------------- objects

START_TEST(test_object_table)
{
    const std::string d = dir("good");
    ck_assert(!tls_object_exists("c1"));
    Status st = object_add_from_keyval("tls-creds-x509,id=c1,dir=" + d + ",endpoint=client");
    ck_assert_msg(st.ok(), "%s", st.ok() ? "" : st.msg().c_str());
    auto c1 = tls_creds_find("c1");
    ck_assert(c1 && !c1->is_server() && !c1->is_psk() && c1->options().verify_peer);
    st = object_add_from_keyval("tls-creds-psk,id=c1,dir=" + dir("psk"));
    EXPECT_STR(st.msg(), "attempt to add duplicate property 'c1' to object (type 'container')");
    ck_assert_int_eq(st.err(), EEXIST);
    ck_assert(object_add_from_keyval("qom-type=tls-creds-psk,id=p1,dir=" + dir("psk") + ",endpoint=server").ok());
    ck_assert(tls_creds_find("p1")->is_psk() && tls_creds_find("p1")->is_server());
    ck_assert(object_add_from_keyval("authz-simple,id=a1,identity=CN=x").ok());
    EXPECT_STR(authz_find("a1")->identity, "CN=x");
    st = object_add_from_keyval("authz-simple,id=a1,identity=y");
    ck_assert_int_eq(st.err(), EEXIST);
    ck_assert(object_add_from_keyval("{\"qom-type\": \"tls-creds-x509\", \"id\": \"j\", \"dir\": \"" + d +
                                     "\", \"verify-peer\": false}").ok());
    ck_assert(!tls_creds_find("j")->options().verify_peer && !tls_creds_find("j")->is_server());

    // No endpoint: a client, which needs only the CA certificate.
    ck_assert(object_add_from_keyval("tls-creds-x509,id=d0,dir=" + dir("nocert")).ok());
    ck_assert(!tls_creds_find("d0")->is_server());
    st = object_add_from_keyval("iothread,id=io0");
    ck_assert_int_eq(st.err(), ENOTSUP);
    EXPECT_STR(st.msg(), "invalid object type: iothread");
    st = object_add_from_keyval("tls-creds-x509,id=e,dir=" + d + ",endpoint=both");
    EXPECT_STR(st.msg(), "Parameter 'endpoint' does not accept value 'both'");
    st = object_add_from_keyval("tls-creds-x509,id=e,dir=" + d + ",verify-peer=maybe");
    EXPECT_STR(st.msg(), "Parameter 'verify-peer' expects 'on' or 'off'");
    st = object_add_from_keyval("tls-creds-x509,id=e,dir=" + d + ",username=u");
    EXPECT_STR(st.msg(), "Parameter 'username' is unexpected");
    st = object_add_from_keyval("authz-simple,id=e");
    EXPECT_STR(st.msg(), "Parameter 'identity' is missing");
    st = object_add_from_keyval("tls-creds-x509,id=e");
    EXPECT_STR(st.msg(), "Missing 'dir' property value");
    st = object_add_from_keyval("tls-creds-x509,id=1e,dir=" + d);
    ck_assert(!st.ok() && contains(st.msg(), "Parameter 'id' expects an identifier"));
    ck_assert(!tls_object_exists("e"));

    ck_assert(tls_object_del("c1").ok());
    ck_assert(!tls_creds_find("c1"));
    ck_assert(c1 && c1->id() == "c1");   // a holder keeps its reference
    ck_assert(tls_object_del("a1").ok());
    st = tls_object_del("a1");
    ck_assert_int_eq(st.err(), ENOENT);
    EXPECT_STR(st.msg(), "object 'a1' not found");
}
END_TEST

// A session outlives the removal of its credentials from the table.
START_TEST(test_creds_removed_while_in_use)
{
    Pair p;
    {
        TlsCredsOptions so;
        so.server = true;
        so.id = "s-inuse";
        so.dir = dir("good");
        auto s = TlsCreds::create(so);
        ck_assert(s.ok());
        ck_assert(tls_creds_add(s.value()).ok());
    }
    {
        auto cc = creds(dir("good"), false);
        p.handshake(*tls_creds_find("s-inuse"), *cc);
    }
    ck_assert(p.srv_st.ok() && p.cli_st.ok());
    ck_assert(tls_creds_remove("s-inuse").ok());
    exchange(p, 300000);
}
END_TEST

// ---------------------------------------------------------------- a real peer

// Our client against gnutls-serv --echo: certificates checked, data echoed.
START_TEST(test_gnutls_serv_peer)
{
    if (system("command -v gnutls-serv >/dev/null") != 0) {
        ck_abort_msg("gnutls-serv is not installed (gnutls-bin)");
    }
    // A free port: bind 0, read it back, close, hand it to gnutls-serv.
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(bind(probe, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(probe, reinterpret_cast<sockaddr *>(&sa), &sl), 0);
    const std::string port = std::to_string(ntohs(sa.sin_port));
    close(probe);
    const std::string d = dir("good");
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("gnutls-serv", "gnutls-serv", "--echo", "--quiet", "-p", port.c_str(), "--x509cafile",
               (d + "/ca-cert.pem").c_str(), "--x509certfile", (d + "/server-cert.pem").c_str(), "--x509keyfile",
               (d + "/server-key.pem").c_str(), (char *)nullptr);
        _exit(127);
    }
    auto ctx = AioContext::create();
    auto cc = creds(d, false);
    SocketAddress addr;
    addr.host = "127.0.0.1";
    addr.port = port;
    int fd = -1;
    for (int i = 0; i < 100 && fd < 0; i++) {
        auto r = co_socket_connect(addr);
        if (r.ok()) fd = r.value();
        else g_usleep(50000);
    }
    if (fd < 0) kill(pid, SIGTERM);
    ck_assert_msg(fd >= 0, "gnutls-serv does not listen on %s", port.c_str());
    CoSocket s(fd);
    Status st;
    // gnutls-serv echoes line by line: printable lines.
    std::vector<uint8_t> data;
    for (int line = 0; line < 8; line++) {
        for (int i = 0; i < 700; i++) data.push_back(static_cast<uint8_t>('a' + (i * 7 + line) % 26));
        data.push_back('\n');
    }
    std::vector<uint8_t> got(data.size());
    int wr = 1, rd = 1;
    bool done = false;
    coroutine_enter(coroutine_create_fn([&] {
        st = s.co_start_tls(*cc, false, "localhost");
        if (st.ok()) {
            wr = s.co_write_full(data.data(), data.size());
            rd = s.co_read_full(got.data(), got.size());
        }
        done = true;
    }));
    bool finished = run_until(ctx.get(), [&] { return done; });
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
    ck_assert_msg(finished, "the exchange with gnutls-serv hangs");
    ck_assert_msg(st.ok(), "%s", st.ok() ? "" : st.msg().c_str());
    ck_assert_int_eq(wr, 0);
    ck_assert_int_eq(rd, 0);
    ck_assert_msg(got == data, "gnutls-serv echoed other data");
}
END_TEST

static Suite *tls_suite()
{
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("x509");
    tcase_add_unchecked_fixture(tc, make_creds, bgtest::remove_tmpdir);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_x509_exchange);
    tcase_add_test(tc, test_x509_iovecs_and_eof);
    tcase_add_test(tc, test_x509_wrong_ca);
    tcase_add_test(tc, test_x509_client_cert_from_other_ca);
    tcase_add_test(tc, test_x509_verify_peer_needs_client_cert);
    tcase_add_test(tc, test_x509_hostname);
    tcase_add_test(tc, test_x509_authz);
    tcase_add_test(tc, test_endpoint_mismatch);
    tcase_add_test(tc, test_priority);
    tcase_add_test(tc, test_handshake_deadline);
    tcase_add_test(tc, test_psk);
    tcase_add_test(tc, test_create_errors);
    tcase_add_test(tc, test_object_table);
    tcase_add_test(tc, test_creds_removed_while_in_use);
    tcase_add_test(tc, test_gnutls_serv_peer);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(tls_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
