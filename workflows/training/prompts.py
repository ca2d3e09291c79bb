"""The papers' zero-shot chain-of-thought prompt sets for class knowledge.

- ``nanomaterial``: MultiFusion-LLM, section "Zero-Shot CoT LLMs Prompting" (8 prompts).
- ``nanomaterial-cmemrl``: CM-EMRL, section "Zero-Shot CoT LLMs Prompting" (6 prompts).
- ``defect``: CM-EMRL Table 6 (material surface defects, 8 prompts).
- ``corrosion``: CM-EMRL Table 7 (metal panel corrosion grades, 10 prompts).
- ``material``: CM-EMRL Table 8 (general material analysis, 10 prompts).

The prompt texts are the papers' wording; `subject` names what a class is in that set, and is
used in the system message that introduces the class to the LLM.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptSet:
    name: str
    source: str
    subject: str
    prompts: tuple[tuple[str, str], ...]  # (title, text)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.name, self.prompts]).encode()).hexdigest()


NANOMATERIAL = PromptSet(
    "nanomaterial", "MultiFusion-LLM, Zero-Shot CoT LLMs Prompting", "nanomaterial category", (
        ("Introduction", "Provide an overview of the nanomaterial category and its significance "
         "in various fields."),
        ("Definition and Structure", "Define the nanomaterial category and describe its typical "
         "structure at the nanoscale."),
        ("Synthesis Methods", "Explore different methods used to synthesize or fabricate "
         "nanomaterials in this category. Discuss their advantages and limitations."),
        ("Properties", "Highlight the unique physical, chemical, and electronic properties "
         "exhibited by nanomaterials in this category. Discuss how these properties differ from "
         "their bulk counterparts."),
        ("Applications", "Explore the wide range of applications where nanomaterials in this "
         "category are utilized. Discuss their potential impact in fields such as electronics, "
         "energy, medicine, environmental remediation, etc."),
        ("Surface Modification", "Describe the strategies used to modify the surface properties "
         "of nanomaterials in this category, such as functionalization, coating, or doping. "
         "Explain how these modifications enhance their performance or enable specific "
         "applications."),
        ("Toxicity and Safety", "Address the potential health and environmental concerns "
         "associated with nanomaterials in this category. Discuss studies on their toxicity, risk "
         "assessment, and safety measures to mitigate any potential hazards."),
        ("Future Directions", "Discuss current research trends and future prospects for "
         "nanomaterials in this category. Highlight emerging technologies, challenges, and areas "
         "of active exploration."),
    ))

NANOMATERIAL_CMEMRL = PromptSet(
    "nanomaterial-cmemrl", "CM-EMRL, Zero-Shot CoT LLMs Prompting", "nanomaterial category", (
        ("Introduction", "Provide an overview of the nanomaterial category and its significance "
         "across various fields."),
        ("Definition and Structure", "Define the nanomaterial category and describe its typical "
         "structure at the nanoscale."),
        ("Synthesis Methods", "Examine different methods employed for synthesizing or "
         "fabricating nanomaterials within this category. Discuss both their advantages and "
         "limitations."),
        ("Properties", "Highlight the unique physical, chemical, and electronic properties "
         "exhibited by nanomaterials in this category. Explain how these properties differ from "
         "those of bulk materials."),
        ("Surface Modification", "Describe strategies used to modify the surface properties of "
         "nanomaterials in this category, including techniques like functionalization, coating, "
         "or doping. Explain how these modifications enhance their performance or enable "
         "specific applications."),
        ("Applications", "Explore the extensive range of applications wherein nanomaterials from "
         "this category find use. Discuss their potential impact on fields such as electronics, "
         "energy, medicine, and more."),
    ))

DEFECT = PromptSet(
    "defect", "CM-EMRL Table 6", "material surface defect", (
        ("Overview", "Briefly describe the specific material surface defect and its impact on "
         "material performance."),
        ("Characteristics", "Define the defect and its identifying features."),
        ("Formation", "Discuss the formation mechanisms of the defect."),
        ("Detection", "List the primary techniques for defect detection."),
        ("Effects", "Explain the defect's effects on material properties."),
        ("Mitigation", "Outline strategies to mitigate the defect."),
        ("Engineering", "Describe surface engineering techniques to control the defect."),
        ("Case Studies", "Provide examples where defect management improved material use."),
    ))

CORROSION = PromptSet(
    "corrosion", "CM-EMRL Table 7", "corrosion grade of a metal panel", (
        ("Corrosion Grading Overview", "Summarize the numerical corrosion grade system."),
        ("Grade Characteristics", "Detail key features of each corrosion grade."),
        ("Influencing Factors", "Discuss factors that influence corrosion grading."),
        ("Deterioration Mechanisms", "Describe deterioration mechanisms by grade."),
        ("Property Impact", "Examine corrosion's impact on metal properties."),
        ("Mitigation Strategies", "Outline preventive measures for each grade."),
        ("Grade Progression Analysis", "Analyze corrosion grade progression over time."),
        ("Rehabilitation Approaches", "Guide on repair or replace decisions by grade."),
        ("Corrosion Management Case Studies", "Present case studies on corrosion management."),
        ("Economic and Safety Considerations", "Discuss economic and safety implications."),
    ))

MATERIAL = PromptSet(
    "material", "CM-EMRL Table 8", "material", (
        ("Contextual Overview", "Introduce the material's origin, common use, and relevance."),
        ("Properties", "Discuss the material's physical and chemical characteristics."),
        ("Production", "Outline the processes of material preparation or manufacturing."),
        ("Structure", "Examine the material's structural features and their implications."),
        ("Modification", "Describe possible modifications to enhance the material's "
         "properties."),
        ("Longevity", "Analyze the material's durability, degradation, and environmental "
         "impact."),
        ("Applications", "Explore diverse applications and uses of the material."),
        ("Economic Impact", "Reflect on the material's economic significance and societal "
         "influence."),
        ("Safety", "Address health and safety considerations related to the material."),
        ("Future Outlook", "Speculate on potential future developments and research "
         "directions."),
    ))

PROMPT_SETS: dict[str, PromptSet] = {
    s.name: s for s in (NANOMATERIAL, NANOMATERIAL_CMEMRL, DEFECT, CORROSION, MATERIAL)}


def get_prompt_set(name: str) -> PromptSet:
    """The prompt set called `name`; ValueError naming the choices otherwise."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; choose one of {sorted(PROMPT_SETS)}")
    return PROMPT_SETS[name]


def display_name(class_name: str) -> str:
    """Folder name as prose: 'MEMS_devices_and_electrodes' -> 'MEMS devices and electrodes'."""
    return class_name.replace("_", " ").strip()


def system_message(prompt_set: PromptSet, class_name: str) -> str:
    """Zero-shot CoT instruction that introduces the class."""
    return (f"You are an expert in materials science and electron microscopy. The "
            f"{prompt_set.subject} under discussion is: {display_name(class_name)}. Answer each "
            f"question in detailed, technical prose. Let's think step by step.")


def user_message(prompt_set: PromptSet, index: int) -> str:
    """Prompt `index` (0-based) in the papers' 'Prompt N: Title: text' form."""
    title, text = prompt_set.prompts[index]
    return f"Prompt {index + 1}: {title}: {text}"
