// Small static programs for the kind end-to-end test (built by scripts/setup-kind.sh):
// pause (the pod sandbox image) and netprobe (the fence check). Standard library only.
module lethe.local/e2e-kind

go 1.26
