// What the shim's source files share.
#pragma once

#include <string>

namespace elbo {

// `text` copied into memory from malloc, for a C caller to free with elbo_free_message;
// the shim's functions return their errors this way (nullptr on success).
char* message(const std::string& text);

}  // namespace elbo
