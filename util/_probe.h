#pragma once
namespace bg { int probe_value() noexcept; }
