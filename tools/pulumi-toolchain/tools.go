//go:build tools

// Package tools pins what tools/pulumi-toolchain.sh builds from this wrapper module:
// the pulumi CLI (pkg/v3 cmd/pulumi) and the sdk/v3 package whose Version variable the
// build sets with -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v<ver>".
package tools

import (
	_ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
	_ "github.com/pulumi/pulumi/sdk/v3/go/common/version"
)
