//go:build !troupe_other_protocol

package actors

// ProtocolVersion is the version of the message set in troupe.proto. Nodes
// refuse peers that speak another one, because an unknown protobuf type
// crashes the receiving node.
const ProtocolVersion = 3
