// Command luahealth runs an Argo CD resource health check (health.lua) the way Argo CD does:
// in gopher-lua, with the resource as the global `obj`, expecting a table with `status` and
// `message` back. It reads one JSON object per line on stdin and writes one JSON result per
// line on stdout: {"status": ..., "message": ...} or {"error": ...}.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The health statuses Argo CD accepts from a check (gitops-engine health.HealthStatusCode).
var validStatus = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

type result struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: luahealth HEALTH.lua < objects.jsonl")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var obj map[string]any
		var res result
		if err := json.Unmarshal(in.Bytes(), &obj); err != nil {
			res.Error = "input is not a JSON object: " + err.Error()
		} else {
			res = run(string(script), obj)
		}
		if err := out.Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// run evaluates the script as Argo CD evaluates a health check from argocd-cm (without
// useOpenLibs): a fresh VM with only the package, base and table libraries, a one-second
// limit, `obj` as a global. Argo CD also opens a reduced `os`; the check does not use it, so
// leaving it out makes any use fail here instead of differing from Argo CD. Built-in checks
// get all libraries; a check that passes here therefore runs in both places.
func run(script string, obj map[string]any) result {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		L.Push(L.NewFunction(lib.fn))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return result{Error: err.Error()}
	}
	ret := L.Get(-1)
	table, ok := ret.(*lua.LTable)
	if !ok {
		return result{Error: fmt.Sprintf("expect table output from Lua script, not %s", ret.Type())}
	}
	res := result{}
	if s, ok := table.RawGetString("status").(lua.LString); ok {
		res.Status = string(s)
	}
	if m := table.RawGetString("message"); m != lua.LNil {
		res.Message = m.String()
	}
	if !validStatus[res.Status] {
		// What Argo CD shows for a status it does not know.
		return result{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return res
}

// toLua converts decoded JSON as Argo CD converts an unstructured object: maps become tables
// with string keys, lists become arrays indexed from 1.
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []any:
		t := L.NewTable()
		for _, item := range x {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]any:
		t := L.NewTable()
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			t.RawSetString(k, toLua(L, x[k]))
		}
		return t
	}
	return lua.LString(fmt.Sprint(v))
}
