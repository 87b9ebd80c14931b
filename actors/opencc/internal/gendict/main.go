// Command gendict writes the dictionaries that package opencc embeds.
//
// It reads the text dictionaries shipped in the github.com/longbridgeapp/opencc
// module (the version go.mod requires), keeps the first value of every key (the
// only one a conversion uses), applies the fixes below, and writes one sorted
// "key<TAB>value" file per dictionary into the data directory.
//
// The fixes make the data equal, key for key, to the dictionaries of the
// reference OpenCC 1.1.6 (Debian's libopencc-data): the library ships a
// snapshot of OpenCC's master branch with its own additions appended, and
// Troupe's filter must give the reference's output.
//
// Usage (from the opencc package directory, see gen.go):
//
//	go run ./internal/gendict -out data
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// dicts are the dictionaries the supported configurations use.
var dicts = []string{
	"HKPhrasesFinance", "HKVariants", "HKVariantsRev", "HKVariantsRevPhrases",
	"JPShinjitaiCharacters", "JPShinjitaiPhrases", "JPVariants", "JPVariantsRev",
	"STCharacters", "STPhrases", "TSCharacters", "TSPhrases",
	"TWPhrases", "TWPhrasesRev", "TWVariants", "TWVariantsRev", "TWVariantsRevPhrases",
}

// fix is one correction to a library dictionary: set key to value, or delete
// it when value is empty.
type fix struct {
	dict, key, value, why string
}

// Duplicate keys are not listed here: the library appends its
// addition-dictionary (Cantonese and local choices such as 佣->佣, 厘->厘) after
// the upstream entries, and the reference, like this generator, keeps the first.
var fixes = []fix{
	// Entries the library's snapshot has and OpenCC 1.1.6 does not.
	{"STPhrases", "讲下", "", "library addition (Cantonese 講吓): 讲下去 must stay 講下去"},
	{"STPhrases", "南斗", "", "newer upstream entry"},
	{"STPhrases", "南斗六星", "", "newer upstream entry"},
	{"STPhrases", "南斗星君", "", "newer upstream entry"},
	{"STPhrases", "形如斗", "", "newer upstream entry"},
	{"STPhrases", "斗宿", "", "newer upstream entry"},
	{"STPhrases", "斗星官", "", "newer upstream entry"},
	{"STPhrases", "斗木獬", "", "newer upstream entry"},
	{"STPhrases", "迴流", "", "newer upstream entry"},
	{"STPhrases", "高峰", "", "newer upstream entry"},
	{"STPhrases", "气冲斗牛", "氣衝斗牛", "upstream changed 衝 to 沖 after 1.1.6"},
	{"STPhrases", "气冲牛斗", "氣衝牛斗", "upstream changed 衝 to 沖 after 1.1.6"},
	{"STPhrases", "气冲霄汉", "氣衝霄漢", "upstream changed 衝 to 沖 after 1.1.6"},
	// The library's TWPhrases.txt is older than the TWPhrases*.txt it was
	// meant to be built from: 皮肤科 came out 面板科, 虚拟机器 came out 虛擬機器器.
	{"TWPhrases", "皮膚", "", "stale: 皮肤科医生 must be 皮膚科醫生"},
	{"TWPhrases", "虛擬機器", "虛擬機器", "stale: 虚拟机器 must not become 虛擬機器器"},
	{"TWPhrases", "盤符", "磁碟機代號", "stale"},
	{"TWPhrases", "借記卡", "簽帳金融卡", "stale"},
	{"TWPhrasesRev", "面板", "", "stale, the reverse of 皮膚"},
	{"TWPhrasesRev", "碟符", "", "stale, the reverse of 盤符"},
	{"TWPhrasesRev", "磁碟機代號", "盤符", "stale"},
	{"TWPhrasesRev", "簽帳金融卡", "借記卡", "stale"},
	{"HKVariantsRev", "抬", "擡", "missing from the snapshot"},
	{"JPVariantsRev", "潑", "", "snapshot has the pair reversed"},
	{"JPVariantsRev", "溌", "潑", "snapshot has the pair reversed"},
	{"JPVariantsRev", "竈", "", "snapshot has the pair reversed"},
	{"JPVariantsRev", "竃", "竈", "snapshot has the pair reversed"},
	{"JPVariantsRev", "繫", "", "snapshot has the pair reversed"},
	{"JPVariantsRev", "繋", "繫", "snapshot has the pair reversed"},
	{"JPVariantsRev", "醱", "", "snapshot has the pair reversed"},
	{"JPVariantsRev", "醗", "醱", "snapshot has the pair reversed"},
}

func main() {
	out := flag.String("out", "data", "directory to write the dictionaries to")
	flag.Parse()
	src, err := moduleDir("github.com/longbridgeapp/opencc")
	if err != nil {
		log.Fatal(err)
	}
	for _, name := range dicts {
		entries, err := read(filepath.Join(src, "dictionary", name+".txt"))
		if err != nil {
			log.Fatal(err)
		}
		for _, f := range fixes {
			if f.dict != name {
				continue
			}
			if f.value == "" {
				if _, ok := entries[f.key]; !ok {
					log.Fatalf("%s: fix deletes %q, which is not there", name, f.key)
				}
				delete(entries, f.key)
				continue
			}
			entries[f.key] = f.value
		}
		if err := write(filepath.Join(*out, name+".txt"), entries); err != nil {
			log.Fatal(err)
		}
	}
}

func moduleDir(path string) (string, error) {
	b, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", path).Output()
	if err != nil {
		return "", fmt.Errorf("locating module %s: %w", path, err)
	}
	dir := strings.TrimSpace(string(b))
	if dir == "" {
		return "", fmt.Errorf("module %s is not downloaded (run go mod download)", path)
	}
	return dir, nil
}

// read parses a library dictionary. Lines without a tab are dropped, as the
// reference's dictionary compiler would reject them (the library adds one,
// 开户 with a space). Keys are trimmed: HKPhrasesFinance has some with a
// trailing space, which would never match the text they were written for.
func read(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries := make(map[string]string)
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		key, values, ok := strings.Cut(sc.Text(), "\t")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			continue
		}
		value, _, _ := strings.Cut(values, " ")
		if value == "" || strings.ContainsAny(key, "\t\n ") {
			return nil, fmt.Errorf("%s:%d: malformed entry", path, line)
		}
		if _, dup := entries[key]; !dup {
			entries[key] = value
		}
	}
	return entries, sc.Err()
}

func write(path string, entries map[string]string) error {
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('\t')
		b.WriteString(entries[k])
		b.WriteByte('\n')
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
