// TLS credentials (QEMU's tls-creds-x509 and tls-creds-psk objects) and
// the GnuTLS sessions CoSocket runs over them (CoSocket::co_start_tls).
//
// Credentials are plain objects with an id, kept in a process-wide table
// so that consumers given only an id in their options (the NBD server's
// tls-creds, the nbd driver's tls-creds) can find them; authz objects
// (authz-simple) likewise. The table is used from the main thread only; a
// TlsCreds is immutable once created and may back sessions of any thread
// (its last reference may go in any thread).
#pragma once

#include <sys/uio.h>

#include <memory>
#include <string>
#include <vector>

#include "util/error.h"

namespace bg {

struct TlsCredsOptions {
    enum class Kind { kX509, kPsk };
    Kind kind = Kind::kX509;
    std::string id;
    std::string dir;               // "dir": where the files are
    bool server = false;           // "endpoint": server or client (default, as QEMU)
    // x509: "verify-peer" (default on): a server demands a client
    // certificate signed by the CA, a client checks the server's chain (and
    // hostname when given). off: no check on either side (as QEMU).
    bool verify_peer = true;
    // "priority": a GnuTLS priority string ("": NORMAL without TLS 1.0/1.1)
    std::string priority;
    std::string username;          // psk client: "username" (default "qemu")
};

// Loaded credentials: x509 from dir/{ca-cert,server-cert,server-key,
// client-cert,client-key,ca-crl,dh-params}.pem as QEMU names them (a server
// needs ca-cert, server-cert and server-key; a client ca-cert, and uses
// client-cert/client-key when both exist); psk from dir/keys.psk
// ("user:hexkey" lines; a server looks the client's user up in it per
// connection, a client takes its username's key at creation).
//
// Lifetime: sessions hold a reference (shared_from_this), so removing the
// object from the table (object-del) while connections use it is safe:
// they keep the credentials they started with, as in QEMU.
class TlsCreds : public std::enable_shared_from_this<TlsCreds> {
  public:
    // Loads and checks the files. Errors are QEMU's texts, without a
    // prefix (callers add "--object ..." or nothing, as QEMU does):
    //   Missing 'dir' property value
    //   Unable to access credentials DIR/ca-cert.pem: No such file or directory
    //   Cannot load CA cert list P: ..., Unable to import server certificate P: <gnutls>
    //   The server certificate P has expired / is not yet active
    //   The certificate P basic constraints do not show a CA
    //   Our own certificate P failed validation against CA: The certificate hasn't got a known issuer
    //   Cannot load certificate 'C' & key 'K': <gnutls>
    //   username should not be set when endpoint=server
    //   Username U not found in PSK file P
    static Result<std::shared_ptr<TlsCreds>> create(const TlsCredsOptions &opts);
    ~TlsCreds();
    const TlsCredsOptions &options() const { return opts_; }
    const std::string &id() const { return opts_.id; }
    bool is_server() const { return opts_.server; }
    bool is_psk() const { return opts_.kind == TlsCredsOptions::Kind::kPsk; }
    // GnuTLS credential handles for util/tls.cc (opaque here).
    void *gnutls_creds() const { return creds_; }
    void *gnutls_dh() const { return dh_; }

  private:
    TlsCreds() = default;
    Status load_x509();
    Status load_psk();
    TlsCredsOptions opts_;
    void *creds_ = nullptr;   // gnutls_certificate_credentials_t or gnutls_psk_*_credentials_t
    void *dh_ = nullptr;      // gnutls_dh_params_t or nullptr
};

// authz-simple,id=ID,identity=NAME: allows the one peer identity NAME (an
// x509 distinguished name or a PSK username).
struct AuthzSimple {
    std::string id;
    std::string identity;
};

// The process-wide object table. add fails with EEXIST "attempt to add
// duplicate property 'ID' to object (type 'container')" as QEMU does for
// any object id in use; remove fails with ENOENT.
Status tls_creds_add(std::shared_ptr<TlsCreds> creds);
std::shared_ptr<TlsCreds> tls_creds_find(const std::string &id);
Status tls_creds_remove(const std::string &id);
Status authz_add(const AuthzSimple &a);
const AuthzSimple *authz_find(const std::string &id);
Status authz_remove(const std::string &id);
// Every id in either table or in util/user-objects.h's (for object-add's
// duplicate check).
bool tls_object_exists(const std::string &id);
// Whether the authz object authz_id (authz-simple, or an authz-list of
// util/user-objects.h) allows identity (an x509 DN, or a PSK username when
// psk). Errors: ENOENT "Cannot find QAuthZ object ID
// ID"; EACCES "TLS x509 authz check for DN is denied" ("TLS PSK ...").
Status tls_authz_check(const std::string &authz_id, const std::string &identity, bool psk = false);

// ---- GnuTLS session I/O used by CoSocket (util/co-socket.cc) ----
// One attempt each: bytes moved (> 0), 0 at a clean end (read), or -errno;
// -EAGAIN with *want_write telling which readiness GnuTLS waits for.
// session is CoSocket::tls_.
ssize_t tls_session_read(void *session, void *buf, size_t len, bool *want_write);
ssize_t tls_session_write(void *session, const struct iovec *iov, int iovcnt, bool *want_write);
void tls_session_free(void *session, void *state);

} // namespace bg
