// util/user-objects.h -- the process-wide table of the user-created
// objects that are neither TLS credentials nor authz-simple (util/tls.h)
// nor iothreads: secret, secret_keyring, tls-creds-anon,
// tls-cipher-suites, authz-list and throttle-group. qapi/user-object.h
// parses and completes them; this table only keeps them.
// Main thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "util/error.h"

namespace bg {

struct AuthzListRule {
    std::string match;
    bool allow = false;
    bool glob = false;   // fnmatch() pattern, else an exact string
};

// One leaky bucket of a throttle-group: rates per second (bytes or
// operations), the burst rate and its length in seconds.
struct ThrottleBucket {
    int64_t avg = 0;
    int64_t max = 0;
    uint64_t burst_length = 1;
};

struct UserObject {
    std::string type;              // "secret", "throttle-group", ...
    std::string id;
    std::string secret;            // secret, secret_keyring: the decoded bytes
    bool authz_allow = false;      // authz-list: the policy when no rule matches
    std::vector<AuthzListRule> rules;
    // throttle-group: bps-total, bps-read, bps-write, iops-total,
    // iops-read, iops-write.
    ThrottleBucket buckets[6];
    int64_t iops_size = 0;
};

// Adds o. Errors: EEXIST "attempt to add duplicate property 'ID' to
// object (type 'container')" when the id names any object of this table
// or of util/tls.h's.
Status user_object_add(UserObject o);
const UserObject *user_object_find(const std::string &id);
// ENOENT "object 'ID' not found".
Status user_object_del(const std::string &id);
// Every object of the table, in id order.
std::vector<const UserObject *> user_objects();

// The bytes of secret ID. Errors (QEMU's texts): ENOENT "No secret with
// id 'ID'", EINVAL "Object with id 'ID' is not a secret".
Result<std::string> secret_lookup(const std::string &id);

// authz-list ID's verdict on identity: true (allow) or false (deny);
// nullptr-like: returns ENOENT when ID is not an authz-list.
Result<bool> authz_list_check(const std::string &id, const std::string &identity);

} // namespace bg
