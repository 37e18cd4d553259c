// monitor/json-stream.cc -- see json-stream.h.
#include "monitor/json-stream.h"

#include "qapi/json-quotes.h"

#include <set>
#include <vector>

namespace bg {

namespace {

bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_structural(unsigned char c) { return c == '{' || c == '}' || c == '[' || c == ']' || c == ',' || c == ':'; }
// Bytes that may stand outside strings in JSON: white space, structure,
// quotes, and the characters of numbers and keywords.
bool is_json_byte(unsigned char c)
{
    return is_space(c) || is_structural(c) || c == '"' || c == '\'' || (c >= '0' && c <= '9') ||
           (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '+' || c == '.';
}

// The parser's reason, shortened to the part after "... - " and mapped to
// QEMU's wording where the meaning is the same.
std::string parse_reason(const char *what)
{
    std::string w = what;
    if (w.find("unexpected end of input") != std::string::npos) return "premature EOI";
    if (w.find("expected '[', '{', or a literal") != std::string::npos ||
        w.find("expected value") != std::string::npos) {
        return "expecting value";
    }
    if (w.find("expected ':'") != std::string::npos) return "missing : in object pair";
    // "{... ,}": the parser wanted another key where QEMU's wanted a value.
    if (w.find("expected string literal") != std::string::npos) {
        size_t lr = w.find("last read: '");
        size_t end = lr == std::string::npos ? lr : w.find("'", lr + 12);
        const bool at_brace = w.find("unexpected '}'") != std::string::npos ||
                              (end != std::string::npos && end > lr + 12 && w[end - 1] == '}');
        return at_brace ? "expecting value" : "key is not a string in object";
    }
    if (w.find("expected '}'") != std::string::npos || w.find("expected ']'") != std::string::npos) {
        return "expected separator in dict";
    }
    size_t dash = w.find(" - ");
    if (dash != std::string::npos) return w.substr(dash + 3);
    size_t colon = w.find("]: ");
    return colon != std::string::npos ? w.substr(colon + 3) : w;
}

} // namespace

Result<nlohmann::json> qmp_parse_json(const std::string &text)
{
    try {
        std::vector<std::set<std::string>> keys;
        std::string dup;
        auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json &v) {
            using E = nlohmann::json::parse_event_t;
            if (ev == E::object_start) {
                keys.emplace_back();
            } else if (ev == E::object_end) {
                if (!keys.empty()) keys.pop_back();
            } else if (ev == E::key && !keys.empty() && dup.empty()) {
                const std::string &k = v.get_ref<const std::string &>();
                if (!keys.back().insert(k).second) dup = k;
            }
            return true;
        };
        // An open string at the end is an incomplete value, as for the parser.
        Result<std::string> std_text = json_translate_quotes(text);
        if (!std_text) return make_error(EINVAL, "JSON parse error, premature EOI");
        nlohmann::json j = nlohmann::json::parse(std_text.value(), cb);
        if (!dup.empty()) return make_error(EINVAL, "JSON parse error, duplicate key");
        return j;
    } catch (const nlohmann::json::parse_error &e) {
        return make_error(EINVAL, "JSON parse error, %s", parse_reason(e.what()).c_str());
    } catch (const std::bad_alloc &) {
        return make_error(ENOMEM, "JSON parse error, out of memory");
    } catch (const std::exception &e) {
        return make_error(EINVAL, "JSON parse error, %s", e.what());
    }
}

void JsonStreamer::reset()
{
    buf_.clear();
    depth_ = 0;
    in_value_ = scalar_ = escape_ = oversized_ = false;
    quote_ = 0;
    over_what_ = nullptr;
}

void JsonStreamer::fail(const std::string &msg)
{
    reset();
    emit_(make_error(EINVAL, "%s", msg.c_str()));
}

void JsonStreamer::end_value()
{
    if (oversized_) {
        fail(over_what_);
        return;
    }
    if (scalar_) {
        // QEMU's lexer knows its keywords and numbers; a bad one is reported
        // by name, a good one parses to a non-object (refused later).
        Result<nlohmann::json> r = qmp_parse_json(buf_);
        std::string text = buf_;
        reset();
        if (!r) {
            emit_(make_error(EINVAL, "JSON parse error, invalid keyword '%s'", text.c_str()));
        } else {
            emit_(std::move(r));
        }
        return;
    }
    Result<nlohmann::json> r = qmp_parse_json(buf_);
    reset();
    emit_(std::move(r));
}

void JsonStreamer::feed(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        const unsigned char c = static_cast<unsigned char>(data[i]);
        if (skipping_) {
            // After a lexical error, input is skipped up to a structural
            // character, which then counts as usual.
            if (!is_structural(c)) continue;
            skipping_ = false;
        }
        if (quote_ == 0 && !is_json_byte(c)) {
            // A byte no JSON token has (0x01 and 0xFF, which clients send
            // to resynchronise, among them): the message so far is dropped.
            std::string what(1, static_cast<char>(c));
            fail("JSON parse error, stray '" + what + "'");
            skipping_ = true;
            continue;
        }
        if (!in_value_) {
            if (is_space(c) || c == ',' || c == ':') continue;
            if (c == '}' || c == ']') {
                fail("JSON parse error, expecting value");
                continue;
            }
            in_value_ = true;
            scalar_ = c != '{' && c != '[';
        } else if (scalar_ && quote_ == 0 && (is_space(c) || is_structural(c))) {
            end_value();
            i--;   // this byte starts (or separates) what follows
            continue;
        }

        if (!oversized_) {
            if (buf_.size() >= kMaxBytes) {
                oversized_ = true;
                over_what_ = "JSON token size limit exceeded";
                buf_.clear();
                buf_.shrink_to_fit();
            } else {
                buf_ += static_cast<char>(c);
            }
        }

        if (quote_) {
            if (escape_) {
                escape_ = false;
            } else if (c == '\\') {
                escape_ = true;
            } else if (c == static_cast<unsigned char>(quote_)) {
                quote_ = 0;
                if (scalar_) {
                    end_value();   // a top-level string ends with its quote
                }
            }
            continue;
        }
        if (c == '"' || c == '\'') {
            quote_ = static_cast<char>(c);
        } else if (c == '{' || c == '[') {
            if (++depth_ > kMaxDepth && !oversized_) {
                oversized_ = true;
                over_what_ = "JSON nesting depth limit exceeded";
                buf_.clear();
                buf_.shrink_to_fit();
            }
        } else if (c == '}' || c == ']') {
            if (--depth_ == 0) end_value();
        }
    }
}

void JsonStreamer::finish()
{
    if (in_value_ && scalar_ && quote_ == 0) {
        end_value();
        return;
    }
    reset();
}

} // namespace bg
