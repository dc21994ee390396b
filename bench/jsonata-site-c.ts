/**
 * mappings/site-c.yaml written in JSONata: one expression per resource rule (evaluated per record, per subject
 * or per HAIC cycle), one expression that groups the HAIC infusion-day rows into cycles, and a shared library
 * (value maps, dates, units, required checks) evaluated once and bound into every expression. The driver in
 * TypeScript only groups records by subject, handles rejects, computes urn:uuid fullUrls (the helpers of the
 * hand-written mapper) and assembles the bundles.
 */
import jsonata from 'jsonata';
import type { Bundle } from '@medplum/fhirtypes';
import type { SourceRecord } from '../src/source/record.ts';
import { fullUrlFor } from '../src/mapping/identity.ts';
import { bundleOf, bySubject, systemOf, TRIAL_ID, type Built, type MeddraMap, type SubjectResult } from './handwritten-site-c.ts';

type Expr = ReturnType<typeof jsonata>;
type Json = Record<string, unknown>;

/** Library: evaluated once; its members are bound into each rule expression as $name. */
const LIBRARY = String.raw`
(
  $rx := 'http://www.nlm.nih.gov/research/umls/rxnorm';
  $sct := 'http://snomed.info/sct';
  $ncit := 'http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl';
  $cs := 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/CodeSystem';
  $fu := {"system": $rx, "code": "4492", "display": "Fluorouracil"};
  $lv := {"system": $rx, "code": "6313", "display": "Leucovorin"};
  $sora := {"system": $rx, "code": "495881", "display": "Sorafenib"};
  $rt := {"system": $sct, "code": "33195004", "display": "Teleradiotherapy procedure"};
  $c := function($system, $code, $display) { {"system": $system, "code": $code, "display": $display} };
  $cGy := {"Gy": 100, "cGy": 1, "mGy": 0.1};
  $ser := 'http://terminology.hl7.org/CodeSystem/adverse-event-seriousness';
  $aeo := 'http://terminology.hl7.org/CodeSystem/adverse-event-outcome';
  $aer := 'urn:oid:2.16.840.1.113883.3.989.2.1.1.19';
  $mr := $cs & '/mrecist-response';
  $tp := $cs & '/assessment-timepoint';
  $pv := $cs & '/portal-vein-invasion';
  $hep := {"system": $cs & '/procedure', "code": "hepatectomy", "display": "Hepatectomy"};
  $lt := {"system": $sct, "code": "18027006", "display": "Transplantation of liver"};

  $daysIn := function($y, $m) {
    $m = 2 ? ((($y % 4 = 0) and ($y % 100 != 0)) or ($y % 400 = 0) ? 29 : 28) : ($m in [4, 6, 9, 11] ? 30 : 31)
  };
  $calendar := function($v, $y, $m, $d) {(
    $mn := $type($m) = 'string' ? $number($m);
    $exists($mn) and ($mn < 1 or $mn > 12) ? $error("impossible date: month " & $mn);
    $dn := $type($d) = 'string' ? $number($d);
    $exists($dn) and ($dn < 1 or $dn > $daysIn($number($y), $mn)) ? $error("impossible date: day " & $dn & " in '" & $v & "'");
    $v
  )};

  {
    "NS": "urn:trialbridge:ldccrt-hcc-p2",
    "UCUM": "http://unitsofmeasure.org",
    "ARM": "LD-CCRT then sorafenib",
    "maps": {
      "treatment": {
        "5FU": $fu, "5-FU": $fu, "FLUOROURACIL": $fu, "LV": $lv, "LEUCOVORIN": $lv, "LEUCOVORIN CALCIUM": $lv,
        "SORA": $sora, "SORAFENIB": $sora, "RT": $rt, "RADIOTHERAPY": $rt
      },
      "sex": {"M": "male", "MALE": "male", "F": "female", "FEMALE": "female", "U": "unknown"},
      "grade": {
        "1": $c($ncit, "C41338", "Grade 1 Mild Adverse Event"),
        "2": $c($ncit, "C41339", "Grade 2 Moderate Adverse Event"),
        "3": $c($ncit, "C41340", "Grade 3 Severe Adverse Event"),
        "4": $c($ncit, "C41337", "Grade 4 Life Threatening or Disabling Adverse Event"),
        "5": $c($ncit, "C48275", "Grade 5 Death Related to Adverse Event")
      },
      "seriousness": {
        "Y": $c($ser, "serious", "Serious"), "YES": $c($ser, "serious", "Serious"), "1": $c($ser, "serious", "Serious"),
        "N": $c($ser, "non-serious", "Non-serious"), "NO": $c($ser, "non-serious", "Non-serious"), "0": $c($ser, "non-serious", "Non-serious")
      },
      "seriousnessR4": {
        "serious": $c($ser, "Serious", "Serious"), "non-serious": $c($ser, "Non-serious", "Non-serious")
      },
      "outcome": {
        "RECOVERED": $c($aeo, "resolved", "Resolved"), "RECOVERED/RESOLVED": $c($aeo, "resolved", "Resolved"),
        "RECOVERING": $c($aeo, "recovering", "Recovering"), "RECOVERING/RESOLVING": $c($aeo, "recovering", "Recovering"),
        "NOT RECOVERED": $c($aeo, "ongoing", "Ongoing"), "NOT RECOVERED/NOT RESOLVED": $c($aeo, "ongoing", "Ongoing"),
        "SEQUELAE": $c($aeo, "resolvedWithSequelae", "Resolved with Sequelae"),
        "RECOVERED/RESOLVED WITH SEQUELAE": $c($aeo, "resolvedWithSequelae", "Resolved with Sequelae"),
        "FATAL": $c($aeo, "fatal", "Fatal")
      },
      "outcomeResearch": {
        "resolved": $c($aer, "recoveredorresolved", "Recovered/Resolved"),
        "recovering": $c($aer, "roveringorresolving", "Recovering/Resolving"),
        "ongoing": $c($aer, "notrecoveredorresolved", "Not Recovered/Not Resolved"),
        "resolvedWithSequelae": $c($aer, "resolvedwithsequelae", "Recovered/Resolved with Sequelae"),
        "fatal": $c($aer, "fatal", "Fatal")
      },
      "relatedness": {
        "NOT": $c($ncit, "C53256", "Not Related"), "NOT RELATED": $c($ncit, "C53256", "Not Related"),
        "UNLIKELY": $c($ncit, "C53257", "Unlikely Related"), "UNLIKELY RELATED": $c($ncit, "C53257", "Unlikely Related"),
        "POSSIBLE": $c($ncit, "C53258", "Possibly Related"), "POSSIBLY RELATED": $c($ncit, "C53258", "Possibly Related"),
        "RELATED": $c($ncit, "C53260", "Related")
      },
      "mrecist": {
        "CR": $c($mr, "CR", "Complete response"), "PR": $c($mr, "PR", "Partial response"), "SD": $c($mr, "SD", "Stable disease"),
        "PD": $c($mr, "PD", "Progressive disease"), "NE": $c($mr, "NE", "Not evaluable")
      },
      "timepoint": {
        "POST4W": $c($tp, "post-ccrt-week-4", "4 weeks after LD-CCRT"),
        "POST-CCRT WEEK 4": $c($tp, "post-ccrt-week-4", "4 weeks after LD-CCRT"),
        "FOLLOW-UP": $c($tp, "follow-up", "Follow-up assessment")
      },
      "pvi": {
        "VP0": $c($pv, "Vp0", "No portal vein invasion"),
        "VP1": $c($pv, "Vp1", "Invasion of a portal vein branch distal to the second-order branches"),
        "VP2": $c($pv, "Vp2", "Invasion of second-order branches of the portal vein"),
        "VP3": $c($pv, "Vp3", "Invasion of first-order branches of the portal vein"),
        "VP4": $c($pv, "Vp4", "Invasion of the main trunk of the portal vein")
      },
      "surgery": {"RESECT": $hep, "HEPATECTOMY": $hep, "LT": $lt, "LIVER TRANSPLANTATION": $lt}
    },

    /* value map lookup (source values arrive trimmed): case-insensitive unless $exact; absent -> nothing; unmapped -> error */
    "code": function($map, $name, $v, $exact) {
      $exists($v) ? (
        $hit := $lookup($map, $exact ? $v : $uppercase($v));
        $exists($hit) ? $hit : $error("'" & $v & "' is not in value map '" & $name & "'")
      )
    },
    "req": function($v, $field) { $exists($v) ? $v : $error($field & ": required value is missing") },
    /* ISO 8601 date kept at its precision; a date-time needs an offset (the mapping declares no timezone) */
    "date": function($v, $dateOnly) {
      $exists($v) ? (
        $p := $match($v, /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/);
        $exists($p) ? $calendar($v, $p.groups[0], $p.groups[1], $p.groups[2]) : (
          $t := $match($v, /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/);
          $g := $t.groups;
          $not($exists($t)) ? $error("'" & $v & "' is not a date") : (
            $calendar($v, $g[0], $g[1], $g[2]);
            ($number($g[3]) > 23 or $number($g[4]) > 59 or ($type($g[5]) = 'string' and $number($g[5]) > 59)) ? $error("impossible time in '" & $v & "'");
            $type($g[7]) != 'string' ? $error("date-time '" & $v & "' has no timezone") : (
              $dateOnly ? $substring($v, 0, 10) : (
                $zone := $g[7] = 'Z' ? 'Z' : $length($g[7]) = 5 ? $substring($g[7], 0, 3) & ':' & $substring($g[7], 3) : $g[7];
                $g[0] & '-' & $g[1] & '-' & $g[2] & 'T' & $g[3] & ':' & $g[4] & ':' & ($type($g[5]) = 'string' ? $g[5] : '00')
                  & ($type($g[6]) = 'string' ? $g[6] : '') & $zone
              )
            )
          )
        )
      )
    },
    "decimal": function($v) { $exists($v) ? $number($v) },
    /* dose in Gy (or cGy, mGy) to cGy, rounded like the engine's 12 significant digits */
    "toCGy": function($v, $unit) {(
      $f := $lookup($cGy, $unit);
      $exists($f) ? ($f = 1 ? $v : $round($v * $f, 8)) : $error("'" & $unit & "' is not a dose unit")
    )}
  }
)`;

/** Meta + business identifier of a resource: the same few lines in every rule. */
const HEAD = (type: string, profile: string, single = false) => String.raw`
    "resourceType": "${type}",
    "meta": {"profile": ["https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/${profile}"], "tag": [{"system": $sys, "code": $key}]},
    "identifier": ${single ? '{"use": "official", "system": $sys, "value": $key}' : '[{"use": "official", "system": $sys, "value": $key}]'},`;

const RULES = {
  /* input: { subject, f: DM fields, ds: [DS fields], refs } */
  'research-study': String.raw`(
    $sys := $NS & ':research-study'; $key := 'LDCCRT-HCC-P2';
    {${HEAD('ResearchStudy', 'trial-research-study').replace('"value": $key}]', '"value": $key}, {"system": "urn:trialbridge:protocol", "value": $key}]')}
      "title": "Liver-directed concurrent chemoradiotherapy followed by sorafenib for advanced hepatocellular carcinoma (phase 2)",
      "status": "completed",
      "phase": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-study-phase", "code": "phase-2", "display": "Phase 2"}]},
      "condition": [{"coding": [{"system": "http://snomed.info/sct", "code": "25370001", "display": "Hepatocellular carcinoma"}]}],
      "arm": [{"name": $ARM, "description": "Liver radiotherapy over 5 weeks with hepatic arterial infusion of 5-fluorouracil 500 mg/day and leucovorin 50 mg/day during the first and last 5 days, then sorafenib 400 mg twice daily from 4 weeks after radiotherapy."}]
    }
  )`,
  patient: String.raw`(
    $sys := $NS & ':site-c:patient'; $key := subject;
    {${HEAD('Patient', 'trial-patient')}
      "active": true,
      "gender": $code($maps.sex, 'sex', f.SEX),
      "birthDate": $date(f.BRTHDTC, true),
      "deceasedDateTime": $date(f.DTHDTC)
    }
  )`,
  condition: String.raw`(
    $sys := $NS & ':site-c:condition'; $key := subject;
    $pvi := $code($maps.pvi, 'portal-vein-invasion', f.PVI);
    {${HEAD('Condition', 'trial-condition')}
      "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
      "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
      "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "25370001", "display": "Hepatocellular carcinoma"}], "text": "Hepatocellular carcinoma"},
      "bodySite": [{"coding": [{"system": "http://snomed.info/sct", "code": "10200004", "display": "Liver structure"}]}],
      "subject": {"reference": refs.patient},
      "onsetDateTime": $date(f.DIAGDTC),
      "stage": $exists($pvi) ? [{"summary": {"coding": [$pvi]}, "type": {"text": "Portal vein invasion (Vp, Liver Cancer Study Group of Japan)"}}]
    }
  )`,
  'research-subject': String.raw`(
    $sys := $NS & ':site-c:research-subject'; $key := subject;
    $start := $req($date(f.RFSTDTC), 'RFSTDTC');
    $death := $date(f.DTHDTC);
    $last := $exists($death) ? $death : (
      $contact := $date((ds[DSDECOD = 'LAST CONTACT'].DSSTDTC)[0]);
      $exists($contact) ? $contact : $date(f.RFENDTC)
    );
    {${HEAD('ResearchSubject', 'trial-research-subject')}
      "status": $exists($death) ? 'off-study' : 'follow-up',
      "period": {"start": $start, "end": $last},
      "study": {"reference": refs.study},
      "individual": {"reference": refs.patient},
      "assignedArm": $ARM,
      "actualArm": $ARM
    }
  )`,
  /* input: { key, f: PR/EX/AE/RS fields, refs }; nothing when the rule does not apply to the record */
  port: String.raw`$uppercase(f.PRTRT) = 'HEPATIC ARTERIAL PORT IMPLANTATION' ? (
    $sys := $NS & ':site-c:port'; $key := key;
    {${HEAD('Procedure', 'trial-procedure')}
      "status": "completed",
      "code": {
        "coding": [{"system": "https://trialbridge.dev/fhir/ldccrt-hcc-p2/CodeSystem/procedure", "code": "hai-port-implantation", "display": "Implantation of a hepatic arterial infusion port"}],
        "text": "Hepatic arterial infusion port implantation"
      },
      "subject": {"reference": refs.patient},
      "performedDateTime": $req($date(f.PRSTDTC), 'PRSTDTC'),
      "reasonReference": [{"reference": refs.condition}]
    }
  )`,
  radiotherapy: String.raw`$uppercase(f.PRCAT) = 'RADIOTHERAPY' ? (
    $sys := $NS & ':site-c:radiotherapy'; $key := key;
    $start := $req($date(f.PRSTDTC), 'PRSTDTC');
    $dose := $req($decimal(f.PRDOSE), 'PRDOSE');
    $unit := $req(f.PRDOSU, 'PRDOSU');
    $fx := $exists(f.PRFXNUM) ? (
      $n := $number(f.PRFXNUM);
      $n = $floor($n) and $n >= 0 ? $n : $error("'" & f.PRFXNUM & "' is not a whole number >= 0")
    );
    {${HEAD('Procedure', 'trial-radiotherapy-course')}
      "extension": [
        {
          "url": "https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/radiotherapy-dose-delivered",
          "extension": [
            {"url": "totalDoseDelivered", "valueQuantity": {"value": $toCGy($dose, $unit), "unit": "cGy", "system": $UCUM, "code": "cGy"}},
            $exists($fx) ? {"url": "fractionsDelivered", "valueUnsignedInt": $fx}
          ]
        },
        $exists($fx) ? {"url": "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-radiotherapy-sessions", "valueUnsignedInt": $fx}
      ],
      "status": "completed",
      "category": {"coding": [{"system": "http://snomed.info/sct", "code": "108290001", "display": "Radiation oncology AND/OR radiotherapy"}]},
      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "33195004", "display": "Teleradiotherapy procedure"}], "text": "Liver-directed radiotherapy course"},
      "subject": {"reference": refs.patient},
      "performedPeriod": {"start": $start, "end": $date(f.PRENDTC)},
      "bodySite": [{"coding": [{"system": "http://snomed.info/sct", "code": "10200004", "display": "Liver structure"}]}],
      "reasonReference": [{"reference": refs.condition}]
    }
  )`,
  /* input: { subject, ex: [{ i, f }] } -> the HAIC cycles: one per subject, cycle (EXGRPID) and drug */
  'haic-cycles': String.raw`(
    $ia := ex[$uppercase(f.EXROUTE) = 'INTRA-ARTERIAL'];
    $groupable := $ia[$exists(f.USUBJID) and $exists(f.EXGRPID)];
    $cycles := $groupable{ f.USUBJID & '/' & f.EXGRPID & '/' & ($contains($uppercase(f.EXTRT), 'LEUCOVORIN') ? 'LV' : '5FU'): [i] };
    {
      "cycles": [$each($cycles, function($members, $key) { {"key": $key, "members": $members} })],
      "ungroupable": [$ia[$not($exists(f.USUBJID) and $exists(f.EXGRPID))].i]
    }
  )`,
  /* input: { key, rows: [EX fields of the cycle's infusion days], refs } */
  haic: String.raw`(
    $sys := $NS & ':site-c:haic'; $key := key;
    $f := rows[0];
    $drug := $code($maps.treatment, 'treatment', $f.EXTRT);
    $start := $reduce(rows.$date(EXSTDTC), function($a, $b) { $b < $a ? $b : $a });
    $end := $reduce(rows.$date(EXENDTC), function($a, $b) { $b > $a ? $b : $a });
    $dose := $req($decimal($f.EXDOSE), 'EXDOSE');
    {${HEAD('MedicationAdministration', 'trial-medication-administration')}
      "status": "completed",
      "medicationCodeableConcept": {"coding": [$req($drug, 'EXTRT')]},
      "subject": {"reference": refs.patient},
      "effectivePeriod": {"start": $req($start, 'EXSTDTC'), "end": $end},
      "reasonReference": [{"reference": refs.condition}],
      "dosage": {
        "text": $exists($f.EXDOSE) and $exists($f.EXDOSU) and $exists($f.EXGRPID)
          ? $f.EXDOSE & ' ' & $f.EXDOSU & '/day by hepatic arterial infusion (cycle ' & $f.EXGRPID & ')',
        "route": {"coding": [{"system": "http://snomed.info/sct", "code": "58100008", "display": "Intra-arterial route"}]},
        "dose": {"value": $dose, "unit": "mg", "system": $UCUM, "code": "mg"},
        "rateRatio": {
          "numerator": {"value": $dose, "unit": "mg", "system": $UCUM, "code": "mg"},
          "denominator": {"value": 1, "unit": "d", "system": $UCUM, "code": "d"}
        }
      }
    }
  )`,
  sorafenib: String.raw`$uppercase(f.EXROUTE) = 'ORAL' ? (
    $sys := $NS & ':site-c:sorafenib'; $key := key;
    $drug := $code($maps.treatment, 'treatment', f.EXTRT);
    $dose := $req($decimal(f.EXDOSE), 'EXDOSE');
    $daily := $contains(f.EXDOSE, /^-?\d{1,9}(\.\d{1,9})?$/) ? (
      $perDose := $number(f.EXDOSE);
      $uppercase(f.EXDOSFRQ) = 'BID' ? $perDose * 2 : $perDose
    );
    {${HEAD('MedicationAdministration', 'trial-medication-administration')}
      "status": "completed",
      "medicationCodeableConcept": {"coding": [$req($drug, 'EXTRT')]},
      "subject": {"reference": refs.patient},
      "effectivePeriod": {"start": $req($date(f.EXSTDTC), 'EXSTDTC'), "end": $date(f.EXENDTC)},
      "reasonReference": [{"reference": refs.condition}],
      "dosage": {
        "text": $exists(f.EXDOSE) and $exists(f.EXDOSU) ? f.EXDOSE & ' ' & f.EXDOSU & ' twice daily by mouth',
        "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006", "display": "Oral route"}]},
        "dose": {"value": $dose, "unit": "mg", "system": $UCUM, "code": "mg"},
        "rateRatio": {
          "numerator": $exists($daily) ? {"value": $daily, "unit": "mg", "system": $UCUM, "code": "mg"},
          "denominator": {"value": 1, "unit": "d", "system": $UCUM, "code": "d"}
        }
      }
    }
  )`,
  surgery: String.raw`$uppercase(f.PRCAT) = 'SURGERY' ? (
    $sys := $NS & ':site-c:surgery'; $key := key;
    {${HEAD('Procedure', 'trial-procedure')}
      "status": "completed",
      "code": {"coding": [$req($code($maps.surgery, 'surgery', f.PRTRT), 'PRTRT')]},
      "subject": {"reference": refs.patient},
      "performedDateTime": $req($date(f.PRSTDTC), 'PRSTDTC'),
      "reasonReference": [{"reference": refs.condition}]
    }
  )`,
  'adverse-event': String.raw`(
    $sys := $NS & ':site-c:adverse-event'; $key := key;
    $ig := 'http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition';
    $pt := $exists(f.AEPTCD) ? (
      $llt := f.AEPTCD;
      $hit := $lookup($meddra.codes, $llt);
      {"system": $meddra.target, "code": $exists($hit) ? $hit.code : $llt, "display": $exists($hit.display) ? $hit.display : f.AEDECOD}
    );
    $grade := $code($maps.grade, 'ctcae-grade', f.AETOXGR, true);
    $suspect := $code($maps.treatment, 'treatment', f.AERELTRT);
    $related := $code($maps.relatedness, 'relatedness', f.AEREL);
    $end := $date(f.AEENDTC);
    {${HEAD('AdverseEvent', 'trial-adverse-event', true)}
      "modifierExtension": [{"url": $ig & "/status", "valueCode": $exists($end) ? 'completed' : 'in-progress'}],
      "extension": [
        {"url": $ig & "/ae-grade", "valueCodeableConcept": {"coding": [$req($grade, 'AETOXGR')]}},
        $exists($end) ? {"url": $ig & "/resolve-date", "valueDateTime": $end},
        $exists($suspect) ? {
          "url": $ig & "/suspect-entity",
          "extension": [
            {"url": "instance", "valueCodeableConcept": {"coding": [$suspect]}},
            $exists($related) ? {"url": "causality", "extension": [{"url": "entityRelatedness", "valueCodeableConcept": {"coding": [$related]}}]}
          ]
        },
        {"url": $ig & "/research-subject-ref", "valueReference": {"reference": refs.researchSubject}}
      ],
      "actuality": "actual",
      "event": {"coding": [$req($pt, 'AEPTCD')], "text": f.AETERM},
      "subject": {"reference": refs.patient},
      "date": $req($date(f.AESTDTC), 'AESTDTC'),
      "seriousness": (
        $s := $req($code($maps.seriousness, 'seriousness', f.AESER), 'AESER');
        {"coding": [$s, $lookup($maps.seriousnessR4, $s.code)]}
      ),
      "outcome": (
        $o := $req($code($maps.outcome, 'ae-outcome', f.AEOUT), 'AEOUT');
        {"coding": [$o, $lookup($maps.outcomeResearch, $o.code)]}
      ),
      "study": [{"reference": refs.study}]
    }
  )`,
  'tumour-response': String.raw`f.RSTESTCD = 'OVRLRESP' ? (
    $sys := $NS & ':site-c:tumour-response'; $key := key;
    $timepoint := $code($maps.timepoint, 'timepoint', $uppercase(f.VISIT) = 'POST-CCRT WEEK 4' ? 'POST4W' : 'FOLLOW-UP');
    {${HEAD('Observation', 'trial-tumour-response')}
      "extension": [{"url": "https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/assessment-timepoint", "valueCodeableConcept": {"coding": [$req($timepoint, 'VISIT')]}}],
      "status": "final",
      "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging", "display": "Imaging"}]}],
      "code": {
        "coding": [{"system": "https://trialbridge.dev/fhir/ldccrt-hcc-p2/CodeSystem/observation", "code": "mrecist-overall-response", "display": "Overall tumour response (mRECIST)"}],
        "text": "Overall tumour response (mRECIST)"
      },
      "subject": {"reference": refs.patient},
      "focus": [{"reference": refs.condition}],
      "effectiveDateTime": $req($date(f.RSDTC), 'RSDTC'),
      "valueCodeableConcept": {"coding": [$req($code($maps.mrecist, 'mrecist', f.RSSTRESC), 'RSSTRESC')]}
    }
  )`,
} as const;

type RuleName = keyof typeof RULES;

export interface JsonataMapper {
  map(records: readonly SourceRecord[], recorded: string): Promise<Bundle[]>;
}

/** Compiles the JSONata expressions once and binds the library into each. */
export async function jsonataMapper(meddra: MeddraMap): Promise<JsonataMapper> {
  const lib = (await jsonata(LIBRARY).evaluate({})) as Json;
  const exprs = {} as Record<RuleName, Expr>;
  for (const [name, source] of Object.entries(RULES) as [RuleName, string][]) {
    const expr = jsonata(source);
    for (const [k, v] of Object.entries(lib)) expr.assign(k, v);
    expr.assign('meddra', meddra);
    exprs[name] = expr;
  }

  async function mapSubject(subject: string, records: readonly SourceRecord[]): Promise<SubjectResult | undefined> {
    const dm: SourceRecord[] = [], ex: SourceRecord[] = [], pr: SourceRecord[] = [], ae: SourceRecord[] = [], rs: SourceRecord[] = [], ds: SourceRecord[] = [];
    for (const r of records) {
      if (r.type === 'DM') dm.push(r);
      else if (r.type === 'EX') ex.push(r);
      else if (r.type === 'PR') pr.push(r);
      else if (r.type === 'AE') ae.push(r);
      else if (r.type === 'RS') rs.push(r);
      else if (r.type === 'DS') ds.push(r);
    }
    if (dm.length === 0) return undefined;
    const rejected = new Set<SourceRecord>(dm.slice(1));
    const out: Built[] = [];
    const keys = new Map<string, Set<string>>();
    const refs = {
      study: fullUrlFor(systemOf('research-study', true), TRIAL_ID),
      patient: fullUrlFor(systemOf('patient'), subject),
      condition: fullUrlFor(systemOf('condition'), subject),
      researchSubject: fullUrlFor(systemOf('research-subject'), subject),
    };
    const run = async (rule: RuleName, input: Json, members: readonly SourceRecord[]) => {
      let resource: Json | undefined;
      try {
        resource = (await exprs[rule].evaluate(input)) as Json | undefined;
      } catch {
        for (const m of members) rejected.add(m);
        return;
      }
      if (resource === undefined) return;
      const tag = (resource.meta as { tag: { system: string; code: string }[] }).tag[0];
      let seen = keys.get(rule);
      if (!seen) keys.set(rule, (seen = new Set()));
      if (seen.has(tag.code)) {
        for (const m of members) rejected.add(m);
        return;
      }
      seen.add(tag.code);
      out.push({ rule, type: resource.resourceType as string, system: tag.system, key: tag.code, fullUrl: fullUrlFor(tag.system, tag.code), resource, records: members });
    };

    const d = dm[0];
    const dmInput = { subject, f: d.fields, ds: ds.map((r) => r.fields), refs };
    for (const rule of ['research-study', 'patient', 'condition', 'research-subject'] as const) await run(rule, dmInput, [d]);
    if (rejected.has(d)) return undefined;

    for (const rule of ['port', 'radiotherapy'] as const) for (const p of pr) await run(rule, { key: p.key, f: p.fields, refs }, [p]);
    const grouping = (await exprs['haic-cycles'].evaluate({ subject, ex: ex.map((r, i) => ({ i, f: r.fields })) })) as {
      cycles: { key: string; members: number[] }[];
      ungroupable: number[];
    };
    for (const i of grouping.ungroupable) rejected.add(ex[i]);
    for (const cycle of grouping.cycles) {
      const members = cycle.members.map((i) => ex[i]);
      await run('haic', { key: cycle.key, rows: members.map((m) => m.fields), refs }, members);
    }
    for (const e of ex) await run('sorafenib', { key: e.key, f: e.fields, refs }, [e]);
    for (const p of pr) await run('surgery', { key: p.key, f: p.fields, refs }, [p]);
    for (const a of ae) await run('adverse-event', { key: a.key, f: a.fields, refs }, [a]);
    for (const r of rs) await run('tumour-response', { key: r.key, f: r.fields, refs }, [r]);
    return { built: rejected.size === 0 ? out : out.filter((b) => !b.records.some((r) => rejected.has(r))), rejected };
  }

  return {
    async map(records, recorded) {
      const bundles: Bundle[] = [];
      for (const [subject, list] of bySubject(records)) {
        const result = await mapSubject(subject, list);
        if (result && result.built.length > 0) bundles.push(bundleOf(subject, result.built, list, result.rejected, recorded));
      }
      return bundles;
    },
  };
}
