// Command monitoring-check checks drainer's monitoring with Prometheus' and the Prometheus
// Operator's own code, for the tests of deploy/components/monitoring and the Helm chart.
//
//	monitoring-check              each line of standard input is one PromQL expression,
//	                              parsed with github.com/prometheus/prometheus/promql/parser
//	monitoring-check objects FILE FILE is a YAML stream (kustomize's or helm's output); each
//	                              ServiceMonitor and PrometheusRule in it is decoded strictly
//	                              (unknown or misspelt fields refused) into the operator's
//	                              monitoring.coreos.com/v1 types, and each PrometheusRule's
//	                              spec loaded as Prometheus loads a rules file (model/rulefmt:
//	                              every expression parsed; durations, labels and annotation
//	                              templates checked)
//	monitoring-check to-json FILE FILE is a YAML stream: prints it as one JSON array of its
//	                              documents, empty ones left out (for tests that compare
//	                              rendered objects)
//
// It prints one JSON line per object ({"kind", "name"}) and per expression ({"expr",
// "metrics": [names of the series it selects]} or {"expr", "error"}), and exits 1 if anything
// did not check.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type line struct {
	Kind    string   `json:"kind,omitempty"`
	Name    string   `json:"name,omitempty"`
	Expr    string   `json:"expr,omitempty"`
	Metrics []string `json:"metrics,omitempty"`
	Error   string   `json:"error,omitempty"`
}

var out = json.NewEncoder(os.Stdout)

func main() {
	var err error
	switch {
	case len(os.Args) == 1:
		err = expressions(os.Stdin)
	case len(os.Args) == 3 && os.Args[1] == "objects":
		err = eachDocument(os.Args[2], object)
	case len(os.Args) == 3 && os.Args[1] == "to-json":
		err = toJSON(os.Args[2])
	default:
		err = errors.New("usage: monitoring-check <EXPRESSIONS, or monitoring-check objects FILE")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitoring-check:", err)
		os.Exit(1)
	}
}

// expressions parses each line of in as a PromQL expression.
func expressions(in io.Reader) error {
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	failed := 0
	for scanner.Scan() {
		answer := check(scanner.Text())
		if answer.Error != "" {
			failed++
		}
		if err := out.Encode(answer); err != nil {
			return err
		}
	}
	if err := scanner.Err(); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d expression(s) did not parse", failed)
	}
	return nil
}

// toJSON prints the documents of the YAML stream in file as one JSON array.
func toJSON(file string) error {
	docs := []json.RawMessage{}
	err := eachDocument(file, func(doc []byte) error {
		converted, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return err
		}
		if string(converted) != "null" {
			docs = append(docs, converted)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return out.Encode(docs)
}

// eachDocument calls do with each document of the YAML stream in file.
func eachDocument(file string, do func([]byte) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if err := do(doc); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
}

// object checks one document: a ServiceMonitor or a PrometheusRule; others are skipped.
func object(doc []byte) error {
	var meta struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return err
	}
	switch meta.Kind {
	case "ServiceMonitor":
		var monitor monitoringv1.ServiceMonitor
		if err := yaml.UnmarshalStrict(doc, &monitor); err != nil {
			return fmt.Errorf("ServiceMonitor %s: %w", meta.Metadata.Name, err)
		}
	case "PrometheusRule":
		var rule monitoringv1.PrometheusRule
		if err := yaml.UnmarshalStrict(doc, &rule); err != nil {
			return fmt.Errorf("PrometheusRule %s: %w", meta.Metadata.Name, err)
		}
		if err := rules(rule.Spec); err != nil {
			return fmt.Errorf("PrometheusRule %s: %w", meta.Metadata.Name, err)
		}
	default:
		return nil
	}
	return out.Encode(line{Kind: meta.Kind, Name: meta.Metadata.Name})
}

// rules loads spec as Prometheus loads a rules file, and prints each rule's expression.
func rules(spec monitoringv1.PrometheusRuleSpec) error {
	content, err := yaml.Marshal(spec)
	if err != nil {
		return err
	}
	groups, errs := rulefmt.Parse(content, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.Default())
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, group := range groups.Groups {
		for _, rule := range group.Rules {
			if err := out.Encode(check(rule.Expr)); err != nil {
				return err
			}
		}
	}
	return nil
}

// check parses expr and names the metrics its selectors select by name.
func check(expr string) line {
	node, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return line{Expr: expr, Error: err.Error()}
	}
	names := map[string]bool{}
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					names[m.Value] = true
				}
			}
		}
		return nil
	})
	metrics := make([]string, 0, len(names))
	for name := range names {
		metrics = append(metrics, name)
	}
	sort.Strings(metrics)
	return line{Expr: expr, Metrics: metrics}
}
