// TLS credentials, the object table and GnuTLS sessions on CoSocket.
//
// Threading: credentials are created and the table is changed in the main
// thread only. A session belongs to its CoSocket and is driven only by the
// coroutines of the socket's thread; GnuTLS credential handles are
// read-only once loaded, so sessions of several threads may share them.
#include "util/tls.h"
#include "util/user-objects.h"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include "util/co-socket.h"

namespace bg {

namespace {

// GnuTLS's defaults without the versions before TLS 1.2, which the NBD
// protocol forbids.
const char kDefaultPriority[] = "NORMAL:-VERS-TLS1.1:-VERS-TLS1.0";
const char kPskPriorityExtra[] = ":+ECDHE-PSK:+DHE-PSK:+PSK";
// Writes of small iovecs are gathered into one record of at most this size.
const size_t kGatherMax = 16384;

// ---- credential files ----

// dir/name if readable; "" if absent and optional. Errors as QEMU words
// them: "Unable to access credentials DIR/NAME: <strerror>".
Result<std::string> cred_path(const std::string &dir, const char *name, bool required)
{
    std::string path = dir + "/" + name;
    if (access(path.c_str(), R_OK) == 0) return path;
    int e = errno;
    if (e == ENOENT && !required) return std::string();
    return make_error(e, "Unable to access credentials %s: %s", path.c_str(), strerror(e));
}

Result<std::string> read_file(const std::string &path)
{
    std::ifstream f(path, std::ios::binary);
    if (!f) return errno_error(errno ? errno : EIO, path);
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) return errno_error(EIO, path);
    return ss.str();
}

gnutls_datum_t datum_of(const std::string &s)
{
    gnutls_datum_t d;
    d.data = reinterpret_cast<unsigned char *>(const_cast<char *>(s.data()));
    d.size = static_cast<unsigned>(s.size());
    return d;
}

const char *cert_status_reason(unsigned status)
{
    if (status & GNUTLS_CERT_INSECURE_ALGORITHM) return "The certificate uses an insecure algorithm";
    if (status & GNUTLS_CERT_REVOKED) return "The certificate has been revoked";
    if (status & GNUTLS_CERT_SIGNER_NOT_FOUND) return "The certificate hasn't got a known issuer";
    if (status & GNUTLS_CERT_INVALID) return "The certificate is not trusted";
    return "Invalid certificate";
}

// Owns a list of parsed certificates.
struct CertList {
    std::vector<gnutls_x509_crt_t> certs;
    CertList() = default;
    CertList(const CertList &) = delete;
    CertList &operator=(const CertList &) = delete;
    ~CertList()
    {
        for (gnutls_x509_crt_t c : certs) gnutls_x509_crt_deinit(c);
    }
};

Status load_ca_list(const std::string &path, CertList *out)
{
    auto data = read_file(path);
    if (!data) return make_error(data.err(), "Cannot load CA cert list %s: %s", path.c_str(), strerror(data.err()));
    gnutls_x509_crt_t certs[16];
    unsigned n = 16;
    gnutls_datum_t d = datum_of(data.value());
    if (gnutls_x509_crt_list_import(certs, &n, &d, GNUTLS_X509_FMT_PEM, 0) < 0) {
        return make_error(EINVAL, "Unable to import CA certificate list %s", path.c_str());
    }
    out->certs.assign(certs, certs + n);
    return {};
}

Status load_cert(const std::string &path, bool server, CertList *out)
{
    auto data = read_file(path);
    if (!data) return make_error(data.err(), "Cannot load CA cert list %s: %s", path.c_str(), strerror(data.err()));
    gnutls_x509_crt_t c;
    int r = gnutls_x509_crt_init(&c);
    if (r < 0) return make_error(ENOMEM, "Unable to initialize certificate: %s", gnutls_strerror(r));
    gnutls_datum_t d = datum_of(data.value());
    r = gnutls_x509_crt_import(c, &d, GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        gnutls_x509_crt_deinit(c);
        return make_error(EINVAL, "Unable to import %s certificate %s: %s", server ? "server" : "client",
                          path.c_str(), gnutls_strerror(r));
    }
    out->certs.push_back(c);
    return {};
}

// Validity period and basic constraints of one certificate of ours.
Status check_cert(gnutls_x509_crt_t c, const std::string &path, bool server, bool ca)
{
    const char *who = ca ? "CA" : server ? "server" : "client";
    time_t now = time(nullptr);
    if (gnutls_x509_crt_get_expiration_time(c) < now) {
        return make_error(EINVAL, "The %s certificate %s has expired", who, path.c_str());
    }
    if (gnutls_x509_crt_get_activation_time(c) > now) {
        return make_error(EINVAL, "The %s certificate %s is not yet active", who, path.c_str());
    }
    int st = gnutls_x509_crt_get_basic_constraints(c, nullptr, nullptr, nullptr);
    if (st > 0 && !ca) {
        return make_error(EINVAL, "The certificate %s basic constraints show a CA, but we need one for a %s",
                          path.c_str(), who);
    }
    if (st == 0 && ca) {
        return make_error(EINVAL, "The certificate %s basic constraints do not show a CA", path.c_str());
    }
    if (st == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE && ca) {
        return make_error(EINVAL, "The certificate %s is missing basic constraints for a CA", path.c_str());
    }
    if (st < 0 && st != GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
        return make_error(EINVAL, "Unable to query certificate %s basic constraints: %s", path.c_str(),
                          gnutls_strerror(st));
    }
    return {};
}

// Checks our own certificate (if any) and the CA certificates before use,
// so that a wrong file is reported at object creation, not at the first
// connection.
Status sanity_check(const std::string &ca_path, const std::string &cert_path, bool server)
{
    CertList ca, cert;
    if (!cert_path.empty()) BG_TRY(load_cert(cert_path, server, &cert));
    BG_TRY(load_ca_list(ca_path, &ca));
    if (!cert.certs.empty()) BG_TRY(check_cert(cert.certs[0], cert_path, server, false));
    for (gnutls_x509_crt_t c : ca.certs) BG_TRY(check_cert(c, ca_path, server, true));
    if (cert.certs.empty() || ca.certs.empty()) return {};
    unsigned status = 0;
    if (gnutls_x509_crt_list_verify(cert.certs.data(), 1, ca.certs.data(), static_cast<unsigned>(ca.certs.size()),
                                    nullptr, 0, 0, &status) < 0) {
        return make_error(EINVAL, "Unable to verify %s certificate %s against CA certificate %s",
                          server ? "server" : "client", cert_path.c_str(), ca_path.c_str());
    }
    if (status != 0) {
        return make_error(EINVAL, "Our own certificate %s failed validation against %s: %s", cert_path.c_str(),
                          ca_path.c_str(), cert_status_reason(status));
    }
    return {};
}

Result<gnutls_dh_params_t> load_dh_params(const std::string &path)
{
    auto data = read_file(path);
    if (!data) return make_error(data.err(), "Cannot load DH parameters from %s: %s", path.c_str(), strerror(data.err()));
    gnutls_dh_params_t dh;
    int r = gnutls_dh_params_init(&dh);
    if (r < 0) return make_error(ENOMEM, "Unable to initialize DH parameters: %s", gnutls_strerror(r));
    gnutls_datum_t d = datum_of(data.value());
    r = gnutls_dh_params_import_pkcs3(dh, &d, GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        gnutls_dh_params_deinit(dh);
        return make_error(EINVAL, "Unable to load DH parameters from %s: %s", path.c_str(), gnutls_strerror(r));
    }
    return dh;
}

// The hex key of user in a "user:hexkey" file.
Result<std::string> psk_lookup(const std::string &path, const std::string &user)
{
    auto data = read_file(path);
    if (!data) return make_error(data.err(), "Cannot read PSK file %s: %s", path.c_str(), strerror(data.err()));
    std::istringstream in(data.value());
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.size() > user.size() && line.compare(0, user.size(), user) == 0 && line[user.size()] == ':') {
            return line.substr(user.size() + 1);
        }
    }
    return make_error(ENOENT, "Username %s not found in PSK file %s", user.c_str(), path.c_str());
}

std::map<std::string, std::shared_ptr<TlsCreds>> &creds_table()
{
    static std::map<std::string, std::shared_ptr<TlsCreds>> t;
    return t;
}

std::map<std::string, AuthzSimple> &authz_table()
{
    static std::map<std::string, AuthzSimple> t;
    return t;
}

Error duplicate_id(const std::string &id)
{
    return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')", id.c_str());
}

} // namespace

// ---- TlsCreds ----

Status TlsCreds::load_x509()
{
    const std::string &dir = opts_.dir;
    std::string ca, crl, cert, key, dh;
    if (opts_.server) {
        BG_TRY_ASSIGN(ca, cred_path(dir, "ca-cert.pem", true));
        BG_TRY_ASSIGN(crl, cred_path(dir, "ca-crl.pem", false));
        BG_TRY_ASSIGN(cert, cred_path(dir, "server-cert.pem", true));
        BG_TRY_ASSIGN(key, cred_path(dir, "server-key.pem", true));
        BG_TRY_ASSIGN(dh, cred_path(dir, "dh-params.pem", false));
    } else {
        BG_TRY_ASSIGN(ca, cred_path(dir, "ca-cert.pem", true));
        BG_TRY_ASSIGN(cert, cred_path(dir, "client-cert.pem", false));
        BG_TRY_ASSIGN(key, cred_path(dir, "client-key.pem", false));
    }
    BG_TRY(sanity_check(ca, cert, opts_.server));

    gnutls_certificate_credentials_t c;
    int r = gnutls_certificate_allocate_credentials(&c);
    if (r < 0) return make_error(ENOMEM, "Cannot allocate credentials: '%s'", gnutls_strerror(r));
    creds_ = c;
    r = gnutls_certificate_set_x509_trust_file(c, ca.c_str(), GNUTLS_X509_FMT_PEM);
    if (r < 0) return make_error(EINVAL, "Cannot load CA certificate '%s': %s", ca.c_str(), gnutls_strerror(r));
    if (!cert.empty() && !key.empty()) {
        r = gnutls_certificate_set_x509_key_file2(c, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM, nullptr, 0);
        if (r < 0) {
            return make_error(EINVAL, "Cannot load certificate '%s' & key '%s': %s", cert.c_str(), key.c_str(),
                              gnutls_strerror(r));
        }
    }
    if (!crl.empty()) {
        r = gnutls_certificate_set_x509_crl_file(c, crl.c_str(), GNUTLS_X509_FMT_PEM);
        if (r < 0) return make_error(EINVAL, "Cannot load CRL '%s': %s", crl.c_str(), gnutls_strerror(r));
    }
    if (opts_.server) {
        if (!dh.empty()) {
            auto p = load_dh_params(dh);
            if (!p) return p.error();
            dh_ = p.value();
            gnutls_certificate_set_dh_params(c, p.value());
        } else {
            gnutls_certificate_set_known_dh_params(c, GNUTLS_SEC_PARAM_MEDIUM);
        }
    }
    return {};
}

Status TlsCreds::load_psk()
{
    std::string file;
    if (opts_.server) {
        if (!opts_.username.empty()) return make_error(EINVAL, "username should not be set when endpoint=server");
        std::string dh;
        BG_TRY_ASSIGN(dh, cred_path(opts_.dir, "dh-params.pem", false));
        BG_TRY_ASSIGN(file, cred_path(opts_.dir, "keys.psk", true));
        gnutls_psk_server_credentials_t c;
        int r = gnutls_psk_allocate_server_credentials(&c);
        if (r < 0) return make_error(ENOMEM, "Cannot allocate credentials: %s", gnutls_strerror(r));
        creds_ = c;
        r = gnutls_psk_set_server_credentials_file(c, file.c_str());
        if (r < 0) return make_error(EINVAL, "Cannot load PSK file %s: %s", file.c_str(), gnutls_strerror(r));
        if (!dh.empty()) {
            auto p = load_dh_params(dh);
            if (!p) return p.error();
            dh_ = p.value();
            gnutls_psk_set_server_dh_params(c, p.value());
        } else {
            gnutls_psk_set_server_known_dh_params(c, GNUTLS_SEC_PARAM_MEDIUM);
        }
        return {};
    }
    BG_TRY_ASSIGN(file, cred_path(opts_.dir, "keys.psk", true));
    const std::string user = opts_.username.empty() ? "qemu" : opts_.username;
    auto key = psk_lookup(file, user);
    if (!key) return key.error();
    gnutls_psk_client_credentials_t c;
    int r = gnutls_psk_allocate_client_credentials(&c);
    if (r < 0) return make_error(ENOMEM, "Cannot allocate credentials: %s", gnutls_strerror(r));
    creds_ = c;
    gnutls_datum_t k = datum_of(key.value());
    r = gnutls_psk_set_client_credentials(c, user.c_str(), &k, GNUTLS_PSK_KEY_HEX);
    if (r < 0) return make_error(EINVAL, "Cannot set PSK key of %s from %s: %s", user.c_str(), file.c_str(), gnutls_strerror(r));
    return {};
}

Result<std::shared_ptr<TlsCreds>> TlsCreds::create(const TlsCredsOptions &opts)
{
    std::shared_ptr<TlsCreds> c(new TlsCreds());
    c->opts_ = opts;
    if (opts.dir.empty()) return make_error(EINVAL, "Missing 'dir' property value");
    Status st = c->is_psk() ? c->load_psk() : c->load_x509();
    if (!st) return st.error();
    return c;
}

TlsCreds::~TlsCreds()
{
    if (creds_) {
        if (!is_psk()) {
            gnutls_certificate_free_credentials(static_cast<gnutls_certificate_credentials_t>(creds_));
        } else if (is_server()) {
            gnutls_psk_free_server_credentials(static_cast<gnutls_psk_server_credentials_t>(creds_));
        } else {
            gnutls_psk_free_client_credentials(static_cast<gnutls_psk_client_credentials_t>(creds_));
        }
    }
    if (dh_) gnutls_dh_params_deinit(static_cast<gnutls_dh_params_t>(dh_));
}

// ---- the object table ----

Status tls_creds_add(std::shared_ptr<TlsCreds> creds)
{
    const std::string id = creds->id();
    if (tls_object_exists(id)) return duplicate_id(id);
    creds_table().emplace(id, std::move(creds));
    return {};
}

std::shared_ptr<TlsCreds> tls_creds_find(const std::string &id)
{
    auto it = creds_table().find(id);
    return it == creds_table().end() ? nullptr : it->second;
}

Status tls_creds_remove(const std::string &id)
{
    if (creds_table().erase(id) == 0) return make_error(ENOENT, "object '%s' not found", id.c_str());
    return {};
}

Status authz_add(const AuthzSimple &a)
{
    if (tls_object_exists(a.id)) return duplicate_id(a.id);
    authz_table().emplace(a.id, a);
    return {};
}

const AuthzSimple *authz_find(const std::string &id)
{
    auto it = authz_table().find(id);
    return it == authz_table().end() ? nullptr : &it->second;
}

Status authz_remove(const std::string &id)
{
    if (authz_table().erase(id) == 0) return make_error(ENOENT, "object '%s' not found", id.c_str());
    return {};
}

bool tls_object_exists(const std::string &id)
{
    return creds_table().count(id) != 0 || authz_table().count(id) != 0 || user_object_find(id) != nullptr;
}

Status tls_authz_check(const std::string &authz_id, const std::string &identity, bool psk)
{
    const AuthzSimple *a = authz_find(authz_id);
    if (!a) {
        Result<bool> allow = authz_list_check(authz_id, identity);   // an authz-list?
        if (!allow) return allow.error();
        if (allow.value()) return {};
    } else if (a->identity == identity) {
        return {};
    }
    return make_error(EACCES, "TLS %s authz check for %s is denied", psk ? "PSK" : "x509", identity.c_str());
}

// ---- sessions ----

struct TlsState {
    gnutls_session_t session = nullptr;
    std::shared_ptr<const TlsCreds> creds;   // kept alive while the session is
    int fd = -1;
    std::string peer;                        // tls_peer_identity()
    size_t pending = 0;                      // bytes of a record send that returned EAGAIN
    std::vector<unsigned char> gather;       // small iovecs gathered into one record
};

namespace {

ssize_t push_vec(gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt)
{
    TlsState *st = static_cast<TlsState *>(p);
    struct msghdr m = {};
    m.msg_iov = reinterpret_cast<struct iovec *>(const_cast<giovec_t *>(iov));
    m.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t n;
    do {
        n = sendmsg(st->fd, &m, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) gnutls_transport_set_errno(st->session, errno);
    return n;
}

ssize_t pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    TlsState *st = static_cast<TlsState *>(p);
    ssize_t n;
    do {
        n = recv(st->fd, buf, len, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) gnutls_transport_set_errno(st->session, errno);
    return n;
}

Status set_session_creds(gnutls_session_t s, const TlsCreds &creds)
{
    const TlsCredsOptions &o = creds.options();
    std::string prio = o.priority.empty() ? kDefaultPriority : o.priority;
    if (creds.is_psk()) prio += kPskPriorityExtra;
    int r = gnutls_priority_set_direct(s, prio.c_str(), nullptr);
    if (r < 0) {
        return make_error(EINVAL, creds.is_psk() ? "Unable to set TLS session priority %s: %s"
                                                 : "Cannot set default TLS session priority %s: %s",
                          prio.c_str(), gnutls_strerror(r));
    }
    r = gnutls_credentials_set(s, creds.is_psk() ? GNUTLS_CRD_PSK : GNUTLS_CRD_CERTIFICATE, creds.gnutls_creds());
    if (r < 0) return make_error(EINVAL, "Cannot set session credentials: %s", gnutls_strerror(r));
    // Asks for a client certificate; whether one is required is decided
    // after the handshake (check_peer_cert).
    if (!creds.is_psk() && creds.is_server()) gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUEST);
    return {};
}

// The x509 peer checks after a handshake: chain against our CA, validity,
// the DN (kept as the peer identity) and, for a client, the hostname.
Status check_peer_cert(TlsState *st, const std::string &hostname)
{
    unsigned status = 0;
    int r = gnutls_certificate_verify_peers2(st->session, &status);
    if (r < 0) return make_error(EACCES, "Verify failed: %s", gnutls_strerror(r));
    if (status != 0) return make_error(EACCES, "%s", cert_status_reason(status));
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(st->session, &n);
    if (!certs || n == 0) return make_error(EACCES, "No certificate peers");
    CertList list;
    time_t now = time(nullptr);
    for (unsigned i = 0; i < n; i++) {
        gnutls_x509_crt_t c;
        r = gnutls_x509_crt_init(&c);
        if (r < 0) return make_error(ENOMEM, "Cannot initialize certificate: %s", gnutls_strerror(r));
        list.certs.push_back(c);
        r = gnutls_x509_crt_import(c, &certs[i], GNUTLS_X509_FMT_DER);
        if (r < 0) return make_error(EACCES, "Cannot import certificate: %s", gnutls_strerror(r));
        if (gnutls_x509_crt_get_expiration_time(c) < now) return make_error(EACCES, "The certificate has expired");
        if (gnutls_x509_crt_get_activation_time(c) > now) {
            return make_error(EACCES, "The certificate is not yet activated");
        }
    }
    char dn[1024];
    size_t size = sizeof(dn);
    r = gnutls_x509_crt_get_dn(list.certs[0], dn, &size);
    if (r < 0) return make_error(EACCES, "Cannot get client distinguished name: %s", gnutls_strerror(r));
    st->peer = dn;
    if (!hostname.empty() && !gnutls_x509_crt_check_hostname(list.certs[0], hostname.c_str())) {
        return make_error(EACCES, "Certificate does not match the hostname %s", hostname.c_str());
    }
    return {};
}

void free_state(TlsState *st)
{
    if (!st) return;
    if (st->session) gnutls_deinit(st->session);
    delete st;
}

} // namespace

Status coroutine_fn CoSocket::co_start_tls(const TlsCreds &creds, bool server, const std::string &hostname,
                                           const std::string &authz_id)
{
    if (tls_) return make_error(EINVAL, "TLS is already active on this connection");
    if (creds.is_server() != server) return make_error(EINVAL, "Credentials endpoint doesn't match session");
    std::unique_ptr<TlsState, void (*)(TlsState *)> st(new TlsState(), free_state);
    st->creds = creds.shared_from_this();
    st->fd = fd_;
    int r = gnutls_init(&st->session, server ? GNUTLS_SERVER : GNUTLS_CLIENT);
    if (r < 0) return make_error(ENOMEM, "Cannot initialize TLS session: %s", gnutls_strerror(r));
    BG_TRY(set_session_creds(st->session, creds));
    gnutls_transport_set_ptr(st->session, st.get());
    gnutls_transport_set_vec_push_function(st->session, push_vec);
    gnutls_transport_set_pull_function(st->session, pull);
    // Time limits are the socket's read deadline, not GnuTLS's.
    gnutls_handshake_set_timeout(st->session, 0);
    if (!server && !hostname.empty() && !creds.is_psk()) {
        gnutls_server_name_set(st->session, GNUTLS_NAME_DNS, hostname.data(), hostname.size());
    }

    for (;;) {
        r = gnutls_handshake(st->session);
        if (r == GNUTLS_E_SUCCESS) break;
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
            int w = co_wait(gnutls_record_get_direction(st->session) == 1, true);
            if (w < 0) return make_error(-w, "TLS handshake failed: %s", strerror(-w));
            continue;
        }
        if (!gnutls_error_is_fatal(r)) continue;
        return make_error(EPROTO, "TLS handshake failed: %s", gnutls_strerror(r));
    }

    if (creds.is_psk()) {
        if (server) {
            const char *u = gnutls_psk_server_get_username(st->session);
            st->peer = u ? u : "";
        } else {
            st->peer = creds.options().username.empty() ? "qemu" : creds.options().username;
        }
    } else if (creds.options().verify_peer) {
        BG_TRY(check_peer_cert(st.get(), server ? std::string() : hostname));
    }
    if (!authz_id.empty()) BG_TRY(tls_authz_check(authz_id, st->peer, creds.is_psk()));
    tls_state_ = st.get();
    tls_ = st->session;
    st.release();
    return {};
}

std::string CoSocket::tls_peer_identity() const
{
    return tls_state_ ? static_cast<TlsState *>(tls_state_)->peer : std::string();
}

namespace {

TlsState *state_of(void *session)
{
    return static_cast<TlsState *>(gnutls_transport_get_ptr(static_cast<gnutls_session_t>(session)));
}

// A GnuTLS record error as -errno: -EAGAIN (with the direction), or the
// transport's errno, or -EPROTO.
ssize_t record_error(gnutls_session_t s, ssize_t r, bool *want_write)
{
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
        *want_write = gnutls_record_get_direction(s) == 1;
        return -EAGAIN;
    }
    if (r == GNUTLS_E_PUSH_ERROR) return -EPIPE;
    if (r == GNUTLS_E_PULL_ERROR) return -ECONNRESET;
    return -EPROTO;
}

} // namespace

ssize_t tls_session_read(void *session, void *buf, size_t len, bool *want_write)
{
    gnutls_session_t s = static_cast<gnutls_session_t>(session);
    for (;;) {
        ssize_t r = gnutls_record_recv(s, buf, len);
        if (r >= 0) return r;
        // A peer closing without a TLS goodbye is an end like any other.
        if (r == GNUTLS_E_PREMATURE_TERMINATION) return 0;
        // Warning alerts and ignored renegotiation requests: read on.
        if (r == GNUTLS_E_WARNING_ALERT_RECEIVED || r == GNUTLS_E_REHANDSHAKE) continue;
        return record_error(s, r, want_write);
    }
}

ssize_t tls_session_write(void *session, const struct iovec *iov, int iovcnt, bool *want_write)
{
    gnutls_session_t s = static_cast<gnutls_session_t>(session);
    TlsState *st = state_of(session);
    ssize_t r;
    if (st->pending) {
        // The record of the last attempt is encrypted and queued: flush it.
        r = gnutls_record_send(s, nullptr, 0);
    } else {
        int i = 0;
        while (i < iovcnt && iov[i].iov_len == 0) i++;
        if (i == iovcnt) return 0;
        const void *data = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        if (len < kGatherMax && i + 1 < iovcnt) {
            st->gather.clear();
            for (; i < iovcnt && st->gather.size() < kGatherMax; i++) {
                size_t take = std::min(iov[i].iov_len, kGatherMax - st->gather.size());
                const unsigned char *p = static_cast<const unsigned char *>(iov[i].iov_base);
                st->gather.insert(st->gather.end(), p, p + take);
            }
            data = st->gather.data();
            len = st->gather.size();
        }
        st->pending = len;
        r = gnutls_record_send(s, data, len);
    }
    if (r >= 0) {
        st->pending = 0;
        return r;
    }
    if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) st->pending = 0;
    return record_error(s, r, want_write);
}

void tls_session_free(void *session, void *state)
{
    (void)session;   // owned by state
    free_state(static_cast<TlsState *>(state));
}

} // namespace bg
