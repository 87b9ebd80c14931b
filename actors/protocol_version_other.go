//go:build troupe_other_protocol

package actors

// ProtocolVersion, in a build with the troupe_other_protocol tag, is one
// no release speaks: the cluster tests build such a node to show that peers
// refuse it at join.
const ProtocolVersion = 999
