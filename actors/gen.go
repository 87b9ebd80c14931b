package actors

//go:generate sh -c "protoc -I . -I $(go list -m -f '{{.Dir}}' github.com/asynkron/protoactor-go)/actor --go_out=. --go_opt=paths=source_relative troupe.proto"
